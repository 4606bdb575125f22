"""``mmdata.stream``: an exactly-once, resumable ``IterableDataset`` over a dataset's shards or a view.

Each rank and DataLoader worker computes its share of the epoch from (seed, epoch, topology) with
the pure functions of :mod:`mmdata.stream.partition`, reads only its samples' byte ranges, and
yields them through a bounded shuffle buffer. Progress is a count of samples consumed per worker,
which the main process can know exactly (see :class:`mmdata.stream.loader.StreamingDataLoader`).
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.context
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mmdata.stream import partition
from mmdata.stream.catalog import Catalog, build_catalog
from mmdata.stream.reader import StreamError, plan_runs, prefetched, read_run
from mmdata.stream.source import Source, open_source

STATE_FORMAT = "mmdata.stream/1"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
DECODES = ("pil", None)
ON_ERROR = ("raise", "skip")
PREFETCH_RUNS = 2  # coalesced reads in flight ahead of decoding, per worker


def stream(
    path: str | os.PathLike,
    *,
    view: str | pa.Table | Iterable[str] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    decode: str | None = "pil",
    image_transform: Callable | None = None,
    text_transform: Callable | None = None,
    columns: Iterable[str] = (),
    shuffle_buffer: int = 2048,
    drop_last: bool = False,
    pad: bool = False,
    on_error: str = "raise",
) -> "StreamingDataset":
    """Stream a dataset folder (local, ``http(s)://`` or an fsspec URL) or one of its views.

    Every sample of the view is yielded once per epoch across all ranks and DataLoader workers, in
    an order fixed by (seed, epoch). ``view``: a view name (``DIR/views/NAME.parquet``), an Arrow
    table with a ``key`` column (extra ``shard``/``tar_offset``/``tar_size`` columns save a lookup)
    or a list of keys. ``columns``: metadata columns to add to each item (e.g. ``clip_score``).
    A remote (http) dataset needs ``manifest.json`` naming its shards. Resuming needs the same
    topology; ``on_error="skip"`` counts unreadable samples in ``skipped`` instead of raising.
    """
    source = open_source(path)
    catalog = build_catalog(source, view=view, columns=columns)
    return StreamingDataset(
        catalog,
        source,
        shuffle=shuffle,
        seed=seed,
        rank=rank,
        world_size=world_size,
        decode=decode,
        image_transform=image_transform,
        text_transform=text_transform,
        columns=tuple(columns),
        shuffle_buffer=shuffle_buffer,
        drop_last=drop_last,
        pad=pad,
        on_error=on_error,
    )


@dataclass(frozen=True)
class Progress:
    """Samples consumed per logical worker, and which logical worker DataLoader worker 0 plays
    (``rotation``), so that a resumed loader serves workers in the order the interrupted one would."""

    num_workers: int
    consumed: tuple[int, ...]
    rotation: int = 0


class StreamingDataset(IterableDataset):
    """Use :func:`stream` to make one. ``set_epoch``, ``state_dict`` and ``load_state_dict`` work as
    in PyTorch; with DataLoader workers use :meth:`loader` (a ``StreamingDataLoader``), whose
    ``state_dict`` knows what the main process has received."""

    def __init__(
        self,
        catalog: Catalog,
        source: Source,
        *,
        shuffle: bool,
        seed: int,
        rank: int | None,
        world_size: int | None,
        decode: str | None,
        image_transform: Callable | None,
        text_transform: Callable | None,
        columns: tuple[str, ...],
        shuffle_buffer: int,
        drop_last: bool,
        pad: bool,
        on_error: str,
    ):
        if decode not in DECODES:
            raise ValueError(f"decode must be one of {DECODES}, not {decode!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
        if image_transform is not None and decode is None:
            raise ValueError("image_transform needs decoded images: use decode='pil'")
        if drop_last and pad:
            raise ValueError("drop_last and pad are exclusive: choose one way to give ranks equal counts")
        if seed < 0:
            raise ValueError("seed must be a non-negative integer")
        if shuffle_buffer < 1:
            raise ValueError("shuffle_buffer must be at least 1 (1 keeps shard order without mixing)")
        self.catalog = catalog
        self.source = source
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, seed, shuffle_buffer
        self.decode, self.image_transform, self.text_transform = decode, image_transform, text_transform
        self.columns = columns
        self.drop_last, self.pad, self.on_error = drop_last, pad, on_error
        self.epoch = 0
        self.errors: list[StreamError] = []  # samples skipped in this process (on_error="skip")
        self._progress: Progress | None = None
        # A spawn-context counter can be shared with fork, forkserver and spawn DataLoader workers alike.
        self._skipped_everywhere = multiprocessing.get_context("spawn").Value("q", 0)
        table = catalog.table
        shard_ids = pc.index_in(table.column("shard"), value_set=pa.array(catalog.shards, pa.string()))
        self._shard_ids = np.asarray(shard_ids, dtype=np.int64)
        self._offsets = np.asarray(table.column("tar_offset"), dtype=np.int64)
        self._sizes = np.asarray(table.column("tar_size"), dtype=np.int64)

    # -- epochs and sizes -------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch``; the same epoch again keeps its progress (so a resumed job may call it)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._progress = None

    def restart(self) -> None:
        """Forget the progress of the current epoch: the next iteration yields all of it."""
        self._progress = None

    def __len__(self) -> int:
        """Samples this rank yields per epoch."""
        return len(
            partition.rank_positions(
                len(self.catalog), world_size=self.world_size, rank=self.rank, drop_last=self.drop_last, pad=self.pad
            )
        )

    def worker_sizes(self, num_workers: int) -> list[int]:
        """Samples each of ``num_workers`` DataLoader workers of this rank yields per epoch."""
        return partition.worker_sizes(
            len(self.catalog),
            world_size=self.world_size,
            rank=self.rank,
            num_workers=max(1, num_workers),
            drop_last=self.drop_last,
            pad=self.pad,
        )

    @property
    def skipped(self) -> int:
        """Samples lost to errors (``on_error="skip"``), counted across this dataset's workers."""
        if self._skipped_everywhere is None:
            return len(self.errors)
        return int(self._skipped_everywhere.value)

    def loader(self, batch_size: int | None = 1, **dataloader_options) -> "torch.utils.data.DataLoader":
        """A DataLoader over this dataset whose ``state_dict`` resumes exactly, workers or not."""
        from mmdata.stream.loader import StreamingDataLoader

        return StreamingDataLoader(self, batch_size=batch_size, **dataloader_options)

    # -- resumable state --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Where this epoch stands, counted from the samples this process has iterated. With
        DataLoader workers, ask the ``StreamingDataLoader`` instead."""
        return self._state(self._progress or Progress(1, (0,)), batch_size=None)

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved epoch with exactly its remaining samples, in the same order. Refuses a
        state from another dataset, view, seed or topology (world size, rank, workers)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not an mmdata.stream state (format {state.get('format')!r})")
        if state["fingerprint"] != self.catalog.fingerprint:
            raise ValueError("the state was saved for another dataset or view (its samples differ)")
        expected = self._settings()
        changed = {name: (state[name], value) for name, value in expected.items() if state[name] != value}
        if changed:
            detail = ", ".join(f"{name} was {old!r}, now {new!r}" for name, (old, new) in changed.items())
            raise ValueError(
                f"cannot resume: {detail}. Resuming needs the same topology and options; "
                "to change them, start the next epoch afresh (set_epoch) instead"
            )
        self.epoch = int(state["epoch"])
        self._progress = Progress(int(state["num_workers"]), tuple(int(c) for c in state["consumed"]), int(state["rotation"]))

    def _settings(self) -> dict:
        return {
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shuffle_buffer": self.shuffle_buffer,
            "world_size": self.world_size,
            "rank": self.rank,
            "drop_last": self.drop_last,
            "pad": self.pad,
        }

    def _state(self, progress: Progress, batch_size: int | None) -> dict:
        return {
            "format": STATE_FORMAT,
            "fingerprint": self.catalog.fingerprint,
            "epoch": self.epoch,
            **self._settings(),
            "num_workers": progress.num_workers,
            "consumed": list(progress.consumed),
            "rotation": progress.rotation,
            "batch_size": batch_size,
        }

    # -- iteration --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        num_workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        progress = self._progress or Progress(num_workers, (0,) * num_workers)
        if progress.num_workers != num_workers:
            raise ValueError(
                f"the dataset is partway through epoch {self.epoch} with progress for {progress.num_workers} "
                f"worker(s) (a loaded state or an unfinished iteration) and is read by {num_workers}: resume with "
                "the same num_workers (0 and 1 count as one), or call restart()"
            )
        logical = (worker + progress.rotation) % num_workers
        skip = progress.consumed[logical]
        items = self._worker_items(num_workers, logical, skip)
        if info is not None:
            for _, item in items:
                yield item
            return
        for done, item in items:
            self._progress = Progress(1, (done,))
            yield item
        self._progress = None  # the epoch ran to its end: iterating again starts it over

    def _worker_items(self, num_workers: int, worker: int, skip: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(positions done, item)`` for one worker's share of the epoch after its first ``skip``;
        positions done count skipped (unreadable) samples too, so a resume never repeats them."""
        plan = partition.worker_plan(
            self.catalog.shard_sizes,
            seed=self.seed,
            epoch=self.epoch,
            shuffle=self.shuffle,
            world_size=self.world_size,
            rank=self.rank,
            num_workers=num_workers,
            worker=worker,
            buffer_size=self.shuffle_buffer,
            drop_last=self.drop_last,
            pad=self.pad,
        )
        emit = plan.emit_order[skip:]
        if len(emit) == 0:
            return
        read_order = plan.read_order
        table = self.catalog.table
        keys = table.column("key").take(pa.array(read_order)).to_pylist()
        extra = {name: table.column(name).take(pa.array(read_order)).to_pylist() for name in self.columns}
        shard_ids, sizes = self._shard_ids[read_order], self._sizes[read_order]
        runs = plan_runs(np.sort(emit), shard_ids, self._offsets[read_order], sizes, self.catalog.shards)
        fetched = prefetched(
            ((run, read_run(self.source, run, [keys[p] for p in run.positions], sizes[run.positions].tolist())) for run in runs),
            PREFETCH_RUNS,
        )
        held: dict[int, Any] = {}  # read, not yet emitted: at most shuffle_buffer + one run
        lost = 0
        try:
            for done, position in enumerate(emit.tolist(), start=skip + 1):
                while position not in held:
                    run, results = next(fetched)
                    held.update(zip(run.positions, results))
                members = held.pop(position)
                try:
                    if isinstance(members, StreamError):
                        raise members
                    item = self._item(self.catalog.shards[shard_ids[position]], keys[position], members)
                except StreamError as error:
                    if self.on_error == "raise":
                        raise
                    lost += 1
                    self._record(error)
                    continue
                for name, values in extra.items():
                    item[name] = values[position]
                yield done, item
        finally:
            fetched.close()
            if lost:
                warnings.warn(
                    f"mmdata.stream skipped {lost} unreadable samples (rank {self.rank}, worker {worker}, "
                    f"epoch {self.epoch}); first: {self.errors[-lost]}",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _item(self, shard: str, key: str, members: dict[str, bytes]) -> dict[str, Any]:
        image_bytes = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
        caption_bytes = members.get("txt")
        if image_bytes is None or caption_bytes is None:
            raise StreamError(shard, key, f"sample lacks an image or a caption (members {sorted(members)})")
        try:
            caption = caption_bytes.decode("utf-8")
            image: Any = image_bytes
            if self.decode == "pil":
                image = decode_pil(image_bytes)
        except Exception as error:  # noqa: BLE001 - an undecodable sample is raised or counted as such
            raise StreamError(shard, key, f"cannot decode: {error}") from error
        if self.image_transform is not None:
            image = self.image_transform(image)
        if self.text_transform is not None:
            caption = self.text_transform(caption)
        return {"key": key, "image": image, "caption": caption}

    def _record(self, error: StreamError) -> None:
        self.errors.append(error)
        if self._skipped_everywhere is not None:
            with self._skipped_everywhere.get_lock():
                self._skipped_everywhere.value += 1

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        # A shared counter travels only to processes being spawned (DataLoader workers).
        if multiprocessing.context.get_spawning_popen() is None:
            state["_skipped_everywhere"] = None
        return state


def decode_pil(data: bytes):
    """An RGB PIL image, fully decoded (as webdataset's ``"pil"``, without its extra copies)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """From the arguments, else an initialised ``torch.distributed``, else RANK/WORLD_SIZE, else 0/1."""
    if (rank is None) != (world_size is None):
        raise ValueError("pass rank and world_size together (or neither, to take them from the environment)")
    if rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        elif "WORLD_SIZE" in os.environ:
            rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
        else:
            rank, world_size = 0, 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} and world_size {world_size} do not fit: need 0 <= rank < world_size")
    return rank, world_size
