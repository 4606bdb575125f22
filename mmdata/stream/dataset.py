"""``mmdata.stream``: an exactly-once, resumable ``IterableDataset`` over a dataset's shards or a view.

Each rank and DataLoader worker computes its share of the epoch from (seed, epoch, topology) and
the catalog's per-shard counts with the pure functions of :mod:`mmdata.stream.partition`, reads the
rows of the shards its share lies in as it reaches them (:mod:`mmdata.stream.rows`) and only its
samples' byte ranges, and yields them through a bounded shuffle buffer. Its resume state is a count
of samples consumed per worker (:mod:`mmdata.stream.resume`), which the main process can know
exactly (see :class:`mmdata.stream.loader.StreamingDataLoader`).
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import multiprocessing.context
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
from torch.utils.data import IterableDataset, get_worker_info

from mmdata.schemas.members import caption_member, image_member
from mmdata.storage import Location
from mmdata.stream import partition
from mmdata.stream.catalog import Catalog, build_catalog
from mmdata.stream.decode import decode_image
from mmdata.stream.loader import StreamingDataLoader
from mmdata.stream.options import StreamOptions
from mmdata.stream.reader import Run, StreamError, fetch_run, parse_run, plan_runs, read_ahead
from mmdata.stream.resume import ConsumedCounts, ResumeState
from mmdata.stream.rows import ShardRows
from mmdata.stream.source import Source, open_source

PREFETCH_RUNS = 2  # coalesced reads ready ahead of decoding, per worker (at least one per read thread)
AUTO_DECODE_THREADS = 4  # most decode threads chosen for the main process (Pillow's decoder releases the GIL)


@dataclass(frozen=True)
class _Part:
    """A planned read (its positions in the worker's read order) and, per sample, what an item needs."""

    run: Run
    keys: list[str]
    sizes: list[int]
    values: dict[str, list]  # metadata column -> value per sample


def _parsed(part: _Part, blob: bytes | OSError) -> Iterator[tuple[int, tuple]]:
    """``(position, (shard, key, members or error, column values))`` of each sample of a fetched part."""
    for index, members in enumerate(parse_run(part.run, blob, part.keys, part.sizes)):
        values = {name: column[index] for name, column in part.values.items()}
        yield part.run.positions[index], (part.run.shard, part.keys[index], members, values)


def stream(
    path: str | os.PathLike | Location,
    *,
    view: str | pa.Table | Iterable[str] | None = None,
    options: StreamOptions | None = None,
    storage_options: dict | None = None,
    **option_values,
) -> StreamingDataset:
    """Stream a dataset folder (local, ``http(s)://``, or any fsspec URL such as ``s3://bucket/ds``,
    whose filesystem gets ``storage_options``) or one of its views.

    Every sample of the view is yielded once per epoch across all ranks and DataLoader workers, in
    an order fixed by (seed, epoch). ``view``: a view name (``DIR/views/NAME.parquet``), an Arrow
    table with a ``key`` column (extra ``shard``/``tar_offset``/``tar_size`` columns save a lookup)
    or a list of keys. How it reads is a :class:`StreamOptions`, given whole (``options``) or by
    field (``shuffle=``, ``seed=``, ``columns=``, ``on_error=``, ...; these win over ``options``).
    A remote (http) dataset needs ``manifest.json`` naming its shards. Resuming needs the same
    topology; ``on_error="skip"`` counts unreadable samples in ``skipped`` instead of raising.
    """
    resolved = StreamOptions.from_options(options, **option_values).resolved()
    source = open_source(path, storage_options)
    return StreamingDataset(build_catalog(source, view=view, columns=resolved.columns), source, resolved)


class StreamingDataset(IterableDataset):
    """Use :func:`stream` to make one. ``set_epoch``, ``state_dict`` and ``load_state_dict`` work as
    in PyTorch; with DataLoader workers use :meth:`loader` (a ``StreamingDataLoader``), whose
    ``state_dict`` knows what the main process has received."""

    def __init__(self, catalog: Catalog, source: Source, options: StreamOptions):
        self.catalog = catalog
        self.source = source
        self.options = options.resolved()
        self.resume = ResumeState(catalog.fingerprint, self.options)
        self.errors: list[StreamError] = []  # samples skipped in this process (on_error="skip")
        # A spawn-context counter can be shared with fork, forkserver and spawn DataLoader workers alike.
        self._skipped_everywhere = multiprocessing.get_context("spawn").Value("q", 0)

    @property
    def rank(self) -> int:
        return self.options.rank

    @property
    def world_size(self) -> int:
        return self.options.world_size

    @property
    def epoch(self) -> int:
        return self.resume.epoch

    # -- epochs and sizes -------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch``; the same epoch again keeps its progress (so a resumed job may call it)."""
        self.resume.set_epoch(epoch)

    def restart(self) -> None:
        """Forget the progress of the current epoch: the next iteration yields all of it."""
        self.resume.restart()

    def __len__(self) -> int:
        """Samples this rank yields per epoch."""
        options = self.options
        start, stop = partition.rank_span(
            len(self.catalog),
            world_size=options.world_size,
            rank=options.rank,
            drop_last=options.drop_last,
            pad=options.pad,
        )
        return stop - start

    def worker_sizes(self, num_workers: int) -> list[int]:
        """Samples each of ``num_workers`` DataLoader workers of this rank yields per epoch."""
        options = self.options
        return partition.worker_sizes(
            len(self.catalog),
            world_size=options.world_size,
            rank=options.rank,
            num_workers=max(1, num_workers),
            drop_last=options.drop_last,
            pad=options.pad,
        )

    @property
    def skipped(self) -> int:
        """Samples lost to errors (``on_error="skip"``), counted across this dataset's workers."""
        if self._skipped_everywhere is None:
            return len(self.errors)
        return int(self._skipped_everywhere.value)

    def loader(self, batch_size: int | None = 1, **dataloader_options) -> StreamingDataLoader:
        """A DataLoader over this dataset whose ``state_dict`` resumes exactly, workers or not."""
        return StreamingDataLoader(self, batch_size=batch_size, **dataloader_options)

    # -- resumable state --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Where this epoch stands, counted from the samples this process has iterated. With
        DataLoader workers, ask the ``StreamingDataLoader`` instead."""
        return self.resume.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved epoch with exactly its remaining samples, in the same order. Refuses a
        state from another dataset, view, seed or topology (world size, rank, workers)."""
        self.resume.load_state_dict(state)

    # -- iteration --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        num_workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        counts = self.resume.counts_for(num_workers)
        logical = (worker + counts.rotation) % num_workers
        items = self._worker_items(num_workers, logical, counts.consumed[logical])
        if info is not None:
            for _, item in items:
                yield item
            return
        for done, item in items:
            self.resume.counts = ConsumedCounts(1, (done,))
            yield item
        self.resume.restart()  # the epoch ran to its end: iterating again starts it over

    def _worker_items(self, num_workers: int, worker: int, skip: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(positions done, item)`` for one worker's share of the epoch after its first ``skip``;
        positions done count skipped (unreadable) samples too, so a resume never repeats them."""
        options = self.options
        plan = partition.worker_plan(
            self.catalog.shard_sizes,
            seed=options.seed,
            epoch=self.epoch,
            shuffle=options.shuffle,
            world_size=options.world_size,
            rank=options.rank,
            num_workers=num_workers,
            worker=worker,
            buffer_size=options.shuffle_buffer,
            drop_last=options.drop_last,
            pad=options.pad,
        )
        emission = plan.emission(skip)
        if emission.skip == emission.n:
            return
        source = self.source
        planned = self._planned_runs(plan, emission.pending, emission.fresh_from)
        # Reader threads only read (the GIL is free meanwhile); parsing happens here, between decodes.
        fetched = read_ahead(planned, lambda part: fetch_run(source, part.run),
                             depth=max(PREFETCH_RUNS, source.read_threads), threads=source.read_threads)
        held: dict[int, tuple] = {}  # read, not yet emitted: at most shuffle_buffer + one run

        def samples() -> Iterator[tuple[int, tuple]]:
            positions = itertools.chain.from_iterable(chunk.tolist() for chunk in emission)
            for done, position in enumerate(positions, start=skip + 1):
                while position not in held:
                    held.update(_parsed(*next(fetched)))
                yield done, held.pop(position)

        threads = self._decode_threads(num_workers)
        decoded = (read_ahead(samples(), self._outcome, depth=2 * threads, threads=threads) if threads > 1
                   else ((sample, self._outcome(sample)) for sample in samples()))
        lost = 0
        try:
            for (done, _), item in decoded:
                if isinstance(item, StreamError):
                    if options.on_error == "raise":
                        raise item
                    lost += 1
                    self._record(item)
                    continue
                yield done, item
        finally:
            decoded.close()
            fetched.close()
            if lost:
                warnings.warn(
                    f"mmdata.stream skipped {lost} unreadable samples (rank {self.rank}, worker {worker}, "
                    f"epoch {self.epoch}); first: {self.errors[-lost]}",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _planned_runs(self, plan: partition.WorkerPlan, pending: np.ndarray, fresh_from: int) -> Iterator[_Part]:
        """The reads of a worker's remaining samples (``pending``, then every position from
        ``fresh_from``) in read order. A shard's rows are read when the reads come near it: the next
        shard's in a background thread while this one's samples are read and decoded."""
        catalog = self.catalog
        rows = ShardRows(self.source, catalog.selection, catalog.columns, catalog.shards)
        starts = plan.segment_starts.tolist()
        visits = []  # (shard index, first sample, positions in the read order) of the segments left to read
        for segment, (shard_index, first, _) in enumerate(plan.segments.tolist()):
            low, high = starts[segment], starts[segment + 1]
            if high > fresh_from or ((pending >= low) & (pending < high)).any():
                visits.append((shard_index, first, low, high))

        def read(visit: int) -> pa.Table:
            shard_index = visits[visit][0]
            return rows.read(catalog.shards[shard_index], int(catalog.shard_sizes[shard_index]))

        with ThreadPoolExecutor(1, thread_name_prefix="mmdata-stream-rows") as pool:
            upcoming = pool.submit(read, 0) if visits else None
            for visit, (shard_index, first, low, high) in enumerate(visits):
                table = upcoming.result()
                upcoming = pool.submit(read, visit + 1) if visit + 1 < len(visits) else None
                earlier = pending[(pending >= low) & (pending < high)]
                wanted = np.concatenate([earlier, np.arange(max(low, fresh_from), high, dtype=np.int64)])
                yield from self._shard_parts(catalog.shards[shard_index], table, wanted, first - low)

    def _shard_parts(self, shard: str, table: pa.Table, wanted: np.ndarray, shift: int) -> Iterator[_Part]:
        """The reads of the ``wanted`` positions of one shard whose selected rows are ``table``
        (position ``p`` is row ``p + shift``)."""
        local = pa.array(wanted + shift)
        keys = table.column("key").take(local).to_pylist()
        offsets = np.asarray(table.column("tar_offset").take(local), dtype=np.int64)
        sizes = np.asarray(table.column("tar_size").take(local), dtype=np.int64)
        values = {name: table.column(name).take(local).to_pylist() for name in self.catalog.columns}
        runs = plan_runs(np.arange(len(wanted)), np.zeros(len(wanted), dtype=np.int64), offsets, sizes, [shard],
                         max_gap=self.source.coalesce_gap)
        for run in runs:
            picked = run.positions
            yield _Part(
                dataclasses.replace(run, positions=wanted[picked].tolist()),
                [keys[index] for index in picked],
                sizes[picked].tolist(),
                {name: [column[index] for index in picked] for name, column in values.items()},
            )

    def _decode_threads(self, num_workers: int) -> int:
        """Threads decoding ahead: the option, else one per core up to 4, but one in a DataLoader worker
        (its siblings use the other cores) and one when nothing is decoded or transformed."""
        options = self.options
        if options.decode is None and options.image_transform is None:
            return 1
        if options.decode_threads is not None:
            return options.decode_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return 1 if get_worker_info() is not None else min(AUTO_DECODE_THREADS, cores)

    def _outcome(self, sample: tuple[int, tuple]) -> dict[str, Any] | StreamError:
        """The item of a ``(done, (shard, key, members, values))`` sample, or the error that stops it."""
        _, (shard, key, members, values) = sample
        if isinstance(members, StreamError):
            return members
        try:
            item = self._item(shard, key, members)
        except StreamError as error:
            return error
        item.update(values)
        return item

    def _item(self, shard: str, key: str, members: dict[str, bytes]) -> dict[str, Any]:
        image_bytes, caption_bytes = image_member(members), caption_member(members)
        if image_bytes is None or caption_bytes is None:
            raise StreamError(shard, key, f"sample lacks an image or a caption (members {sorted(members)})")
        options = self.options
        try:
            caption = caption_bytes.decode("utf-8")
            image: Any = image_bytes
            if options.decode is not None:
                image = decode_image(image_bytes, options.decode, options.jpeg_decoder)
        except Exception as error:  # noqa: BLE001 - an undecodable sample is raised or counted as such
            raise StreamError(shard, key, f"cannot decode: {error}") from error
        if options.image_transform is not None:
            image = options.image_transform(image)
        if options.text_transform is not None:
            caption = options.text_transform(caption)
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

