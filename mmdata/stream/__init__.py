"""The training loader: :func:`mmdata.stream` and what it is built from (formats and I/O only,
never Ray)."""

from mmdata._callable import make_package_callable

make_package_callable(__name__, "mmdata.stream.dataset.stream")

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
