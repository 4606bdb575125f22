"""The training loader: :func:`mmdata.stream` and what it is built from (formats and I/O only,
never Ray)."""

import sys
import types


class _CallableModule(types.ModuleType):
    # ``mmdata.stream`` names both this package and the public function; once any submodule is
    # imported, Python binds the package to that name, so the package calls the function itself.
    def __call__(self, *args, **kwargs):
        from mmdata.stream.dataset import stream

        return stream(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["stream", "StreamingDataset", "StreamingDataLoader", "clip_collate"]


def __getattr__(name: str):
    if name in ("stream", "StreamingDataset"):
        from mmdata.stream import dataset

        return getattr(dataset, name)
    if name == "StreamingDataLoader":
        from mmdata.stream.loader import StreamingDataLoader

        return StreamingDataLoader
    if name == "clip_collate":
        from mmdata.stream.collate import clip_collate

        return clip_collate
    raise AttributeError(f"module 'mmdata.stream' has no attribute {name!r}")
