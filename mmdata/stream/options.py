"""How a stream reads: every option of :func:`mmdata.stream` in one frozen dataclass, checked when made.

What it reads (the dataset folder and the view) is not an option; everything about how it reads is,
so the dataset, its loader and the resume state all take one ``StreamOptions``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable

import torch

from mmdata.stream.decode import DECODES, check_jpeg_decoder

ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class StreamOptions:
    """``rank``/``world_size``: both or neither; neither takes them from an initialised
    ``torch.distributed``, else RANK/WORLD_SIZE, else 0 of 1 (see :meth:`resolved`).
    ``columns``: metadata columns added to each item (e.g. ``clip_score``). ``shuffle_buffer=1``
    keeps shard order without mixing. ``drop_last``/``pad`` give every rank the same count.
    ``on_error="skip"`` counts unreadable samples instead of raising. ``decode``: "pil" (an RGB
    image), "tensor" (uint8 ``[3, H, W]``) or ``None`` (the image's bytes); ``jpeg_decoder``: "auto"
    (simplejpeg for tensors, Pillow for PIL images: the faster for each), "pillow" or "simplejpeg" (see
    :mod:`mmdata.stream.decode`).
    ``decode_threads``: threads decoding (and transforming) samples ahead of the consumer, in order;
    ``None`` picks one per core up to 4 in the main process and 1 in each DataLoader worker (whose
    processes already use the cores)."""

    shuffle: bool = True
    seed: int = 0
    rank: int | None = None
    world_size: int | None = None
    decode: str | None = "pil"
    jpeg_decoder: str = "auto"
    decode_threads: int | None = None
    image_transform: Callable | None = None
    text_transform: Callable | None = None
    columns: tuple[str, ...] = ()
    shuffle_buffer: int = 2048
    drop_last: bool = False
    pad: bool = False
    on_error: str = "raise"

    def __post_init__(self) -> None:
        if isinstance(self.columns, str):
            raise ValueError(f"columns takes a list of column names, e.g. [{self.columns!r}], not one string")
        object.__setattr__(self, "columns", tuple(self.columns))
        if self.decode not in DECODES:
            raise ValueError(f"decode must be one of {DECODES}, not {self.decode!r}")
        check_jpeg_decoder(self.jpeg_decoder)
        if self.jpeg_decoder == "simplejpeg" and self.decode is None:
            raise ValueError(f"jpeg_decoder={self.jpeg_decoder!r} has nothing to decode with decode=None")
        if self.decode_threads is not None and self.decode_threads < 1:
            raise ValueError(f"decode_threads must be at least 1 (or None: automatic), not {self.decode_threads}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {self.on_error!r}")
        if self.image_transform is not None and self.decode is None:
            raise ValueError("image_transform needs decoded images: use decode='pil' or decode='tensor'")
        if self.drop_last and self.pad:
            raise ValueError("drop_last and pad are exclusive: choose one way to give ranks equal counts")
        if self.seed < 0:
            raise ValueError("seed must be a non-negative integer")
        if self.shuffle_buffer < 1:
            raise ValueError("shuffle_buffer must be at least 1 (1 keeps shard order without mixing)")
        if (self.rank is None) != (self.world_size is None):
            raise ValueError("pass rank and world_size together (or neither, to take them from the environment)")
        if self.rank is not None and (self.world_size < 1 or not 0 <= self.rank < self.world_size):
            raise ValueError(
                f"rank {self.rank} and world_size {self.world_size} do not fit: need 0 <= rank < world_size"
            )

    @classmethod
    def from_options(cls, options: StreamOptions | None = None, **values) -> StreamOptions:
        """``options`` (default: the defaults) with ``values`` in place of some fields: how
        :func:`mmdata.stream` turns its keyword arguments into options."""
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise TypeError(f"unknown stream options {unknown}; the options are {names}")
        return cls(**values) if options is None else dataclasses.replace(options, **values)

    def resolved(self) -> StreamOptions:
        """These options with rank and world_size filled in: from an initialised
        ``torch.distributed``, else RANK/WORLD_SIZE, else rank 0 of 1."""
        if self.rank is not None:
            return self
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        elif "WORLD_SIZE" in os.environ:
            rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
        else:
            rank, world_size = 0, 1
        return dataclasses.replace(self, rank=rank, world_size=world_size)
