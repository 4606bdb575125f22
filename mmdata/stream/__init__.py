"""The training loader: :func:`mmdata.stream` and what it is built from (formats and I/O only,
never Ray)."""

import importlib

from mmdata._callable import make_package_callable

make_package_callable(__name__, "mmdata.stream.dataset.stream")

__all__ = ["stream", "StreamOptions", "StreamingDataset", "StreamingDataLoader", "clip_collate"]

# public name -> defining module, imported on first use so that ``import mmdata.stream`` stays cheap
_EXPORTS = {
    "stream": "mmdata.stream.dataset",
    "StreamingDataset": "mmdata.stream.dataset",
    "StreamOptions": "mmdata.stream.options",
    "StreamingDataLoader": "mmdata.stream.loader",
    "clip_collate": "mmdata.stream.collate",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mmdata.stream' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
