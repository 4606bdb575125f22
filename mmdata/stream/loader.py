"""A DataLoader that knows, in the main process, exactly which samples its workers have delivered.

With an ``IterableDataset`` each worker yields its own batches and the DataLoader serves workers in
turn (in-order delivery: round ``j`` holds batch ``j`` of every worker that still has one). Since
every worker's sample count is a pure function of the plan, the number of batches received fixes
how many samples each worker has delivered; nothing needs to flow back from the workers. A resumed
loader rotates the workers' roles so that it serves them in the order the interrupted one would.
"""

from __future__ import annotations

from typing import Iterator

from torch.utils.data import DataLoader

from mmdata.stream import partition
from mmdata.stream.dataset import Progress, StreamingDataset


class StreamingDataLoader(DataLoader):
    """``DataLoader`` over a :class:`StreamingDataset` with ``state_dict``/``load_state_dict``."""

    def __init__(self, dataset: StreamingDataset, batch_size: int | None = 1, **options):
        if not isinstance(dataset, StreamingDataset):
            raise ValueError("StreamingDataLoader reads a StreamingDataset (made by mmdata.stream)")
        refused = {
            "drop_last": "it drops each worker's last partial batch; use mmdata.stream(..., drop_last=True) "
            "for equal per-rank counts",
            "persistent_workers": "persistent workers keep a stale epoch and plan; workers restart each epoch",
            "sampler": "the dataset partitions and shuffles itself",
            "batch_sampler": "the dataset partitions and shuffles itself",
            "shuffle": "pass shuffle to mmdata.stream instead",
        }
        for name, why in refused.items():
            if options.get(name):
                raise ValueError(f"StreamingDataLoader does not take {name}: {why}")
        if options.get("in_order") is False:
            raise ValueError("StreamingDataLoader needs in_order=True: its resume state relies on in-order delivery")
        super().__init__(dataset, batch_size=batch_size, **options)
        self._base: Progress | None = None  # progress when the current iteration started
        self._base_epoch = 0
        self._batches = 0  # batches received since then

    @property
    def _logical_workers(self) -> int:
        return max(1, self.num_workers)

    def __len__(self) -> int:
        """Batches per epoch: every worker's partial last batch counts."""
        size = self.batch_size or 1
        return sum(-(-count // size) for count in self.dataset.worker_sizes(self.num_workers))

    def __iter__(self) -> Iterator:
        self.dataset._progress = self._current()
        base = self.dataset._progress or Progress(self._logical_workers, (0,) * self._logical_workers)
        if base.num_workers != self._logical_workers:
            raise ValueError(
                f"the dataset is partway through epoch {self.dataset.epoch} with progress for {base.num_workers} "
                f"worker(s) (a loaded state or an unfinished iteration) and this loader has {self._logical_workers}: "
                "resume with the same num_workers (0 and 1 count as one), or call dataset.restart()"
            )
        self._base, self._base_epoch, self._batches = base, self.dataset.epoch, 0
        for batch in super().__iter__():
            self._batches += 1
            yield batch
        self._base = None
        self.dataset._progress = None  # the epoch ran to its end: iterating again starts it over

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict:
        """Where the epoch stands for the batches this process has received."""
        progress = self._current() or Progress(self._logical_workers, (0,) * self._logical_workers)
        return self.dataset._state(progress, batch_size=self.batch_size)

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_workers", 1) != self._logical_workers:
            raise ValueError(
                f"the state was saved with {state.get('num_workers')} DataLoader workers, this loader has "
                f"{self._logical_workers}: resume with the same num_workers (0 and 1 count as one)"
            )
        saved_batch = state.get("batch_size")
        if self._logical_workers > 1 and saved_batch is not None and saved_batch != self.batch_size:
            raise ValueError(f"the state was saved with batch_size {saved_batch}, this loader has {self.batch_size}")
        self.dataset.load_state_dict(state)
        self._base, self._batches = None, 0

    def _current(self) -> Progress | None:
        if self._base is None or self._base_epoch != self.dataset.epoch:
            return self.dataset._progress
        base, workers = self._base, self._base.num_workers
        totals = self.dataset.worker_sizes(self.num_workers)
        serving = [(i + base.rotation) % workers for i in range(workers)]
        remaining = [totals[w] - base.consumed[w] for w in serving]
        taken, next_worker = partition.round_robin_take(remaining, self.batch_size or 1, self._batches)
        consumed = list(base.consumed)
        for w, count in zip(serving, taken):
            consumed[w] += count
        return Progress(workers, tuple(consumed), (base.rotation + next_worker) % workers)
