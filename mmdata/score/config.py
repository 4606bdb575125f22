"""Settings of a scoring job, validated when made so a bad option fails before any executor starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mmdata import layout
from mmdata.score.model import DEVICES, PRECISIONS
from mmdata.storage import Location


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """``mmdata score DIR --model M --pretrained P``: which dataset, which model, how to run it.

    ``dataset`` is a folder or an fsspec URL (``s3://bucket/ds``); ``storage_options`` go to its
    filesystem (the config travels to the actors with them). ``model`` and ``pretrained`` are local."""

    dataset: str
    model: str
    pretrained: str | None = None  # None: random init (tests, benchmarks)
    batch_size: int = 256
    device: str = "auto"  # auto: each actor uses a GPU when it sees one
    precision: str = "fp32"  # fp16/bf16: autocast on GPU; on CPU scoring stays fp32
    # None: one actor on CPU; on GPUs up to 4 actors per GPU (one per 4 CPUs), sharing it, so that
    # decoding is spread over several processes.
    actors: int | None = None
    gpus_per_actor: float | None = None  # used when the device is cuda (or auto on a cluster with GPUs)
    cpus_per_actor: float | None = None  # None: the cluster's CPUs shared out among the actors
    decode_workers: int | None = None  # decode threads per actor; None: the actor's CPUs
    prefetch_batches: int = 2
    no_embeddings: bool = False
    default: bool = False  # make this model the one read_table shows as clip_score
    show_progress: bool = True
    storage_options: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.dataset or not self.root.is_dir():
            raise ValueError(f"dataset folder {self.dataset!r} does not exist (pass the folder a download wrote)")
        object.__setattr__(self, "dataset", self.root.url)
        if not self.model:
            raise ValueError("model is required: an open_clip name such as ViT-B-32 or a model-config JSON path")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be at least 1, not {self.actors}")
        if self.gpus_per_actor is not None and not 0 < self.gpus_per_actor <= 8:
            raise ValueError(f"gpus_per_actor must be in (0, 8] (fractions share a GPU), not {self.gpus_per_actor}")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise ValueError(f"cpus_per_actor must be positive, not {self.cpus_per_actor}")
        if self.decode_workers is not None and self.decode_workers < 1:
            raise ValueError(f"decode_workers must be at least 1, not {self.decode_workers}")
        if self.prefetch_batches < 1:
            raise ValueError(f"prefetch_batches must be at least 1, not {self.prefetch_batches}")

    @property
    def root(self) -> Location:
        """The dataset folder, on its filesystem."""
        return layout.dataset(self.dataset, self.storage_options)

    def to_dict(self) -> dict:
        """The options as plain values (storage options left out: they may hold secrets)."""
        options = dataclasses.asdict(self)
        options.pop("storage_options")
        return options
