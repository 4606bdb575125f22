"""A DataLoader that knows, in the main process, exactly which samples its workers have delivered.

With an ``IterableDataset`` each worker yields its own batches and the DataLoader serves workers in
turn (in-order delivery: round ``j`` holds batch ``j`` of every worker that still has one). Since
every worker's sample count is a pure function of the plan, the number of batches received fixes
how many samples each worker has delivered; nothing needs to flow back from the workers. A resumed
loader rotates the workers' roles so that it serves them in the order the interrupted one would.
The counts live in the dataset's :class:`mmdata.stream.resume.ResumeState`.
"""

from __future__ import annotations

from typing import Iterator

from torch.utils.data import DataLoader

from mmdata.stream.resume import ConsumedCounts, Resumable

REFUSED_OPTIONS = {
    "drop_last": "it drops each worker's last partial batch; use mmdata.stream(..., drop_last=True) "
    "for equal per-rank counts",
    "persistent_workers": "persistent workers keep a stale epoch and plan; workers restart each epoch",
    "sampler": "the dataset partitions and shuffles itself",
    "batch_sampler": "the dataset partitions and shuffles itself",
    "shuffle": "pass shuffle to mmdata.stream instead",
}


class StreamingDataLoader(DataLoader):
    """``DataLoader`` over a :class:`StreamingDataset` with ``state_dict``/``load_state_dict``."""

    def __init__(self, dataset: Resumable, batch_size: int | None = 1, **options):
        if not isinstance(dataset, Resumable):
            raise ValueError("StreamingDataLoader reads a StreamingDataset (made by mmdata.stream)")
        for name, why in REFUSED_OPTIONS.items():
            if options.get(name):
                raise ValueError(f"StreamingDataLoader does not take {name}: {why}")
        if options.get("in_order") is False:
            raise ValueError("StreamingDataLoader needs in_order=True: its resume state relies on in-order delivery")
        super().__init__(dataset, batch_size=batch_size, **options)
        self._base: ConsumedCounts | None = None  # counts when the current iteration started
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
        resume = self.dataset.resume
        resume.counts = self._current()  # the workers start from what this process has received
        base = resume.counts_for(self._logical_workers)
        self._base, self._base_epoch, self._batches = base, resume.epoch, 0
        for batch in super().__iter__():
            self._batches += 1
            yield batch
        self._base = None
        resume.restart()  # the epoch ran to its end: iterating again starts it over

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict:
        """Where the epoch stands for the batches this process has received."""
        counts = self._current() or ConsumedCounts.at_start(self._logical_workers)
        return self.dataset.resume.state_dict(counts, batch_size=self.batch_size)

    def load_state_dict(self, state: dict) -> None:
        self.dataset.resume.load_state_dict(state, num_workers=self._logical_workers, batch_size=self.batch_size)
        self._base, self._batches = None, 0

    def _current(self) -> ConsumedCounts | None:
        resume = self.dataset.resume
        if self._base is None or self._base_epoch != resume.epoch:
            return resume.counts
        worker_sizes = self.dataset.worker_sizes(self.num_workers)
        return self._base.after_batches(worker_sizes, self.batch_size or 1, self._batches)
