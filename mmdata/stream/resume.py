"""A stream's resume state, in one place: the epoch, how many samples each logical DataLoader worker
has consumed in it, and the state dict that saves them.

A :class:`mmdata.stream.StreamingDataset` iterated directly counts the samples it yields; a
:class:`mmdata.stream.StreamingDataLoader` counts the batches it receives and turns them into
per-worker counts with :meth:`ConsumedCounts.after_batches` (in-order delivery makes that a pure
function of the plan). Both keep the result in the dataset's :class:`ResumeState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from mmdata.stream import partition
from mmdata.stream.options import StreamOptions

STATE_FORMAT = "mmdata.stream/2"
EARLIER_FORMATS = ("mmdata.stream/1",)  # fingerprinted the catalog another way: their fingerprints never match
# The options a saved state is tied to: with any other value the same counts mean other samples.
RESUME_SETTINGS = ("seed", "shuffle", "shuffle_buffer", "world_size", "rank", "drop_last", "pad")


@dataclass(frozen=True)
class ConsumedCounts:
    """Samples consumed per logical worker, and which logical worker DataLoader worker 0 plays
    (``rotation``), so that a resumed loader serves workers in the order the interrupted one would."""

    num_workers: int
    consumed: tuple[int, ...]
    rotation: int = 0

    @classmethod
    def at_start(cls, num_workers: int) -> ConsumedCounts:
        return cls(num_workers, (0,) * num_workers)

    def after_batches(self, worker_sizes: list[int], batch_size: int, batches: int) -> ConsumedCounts:
        """The counts once ``batches`` more batches of ``batch_size`` have been received from workers
        holding ``worker_sizes`` samples each this epoch, served in turn starting at ``rotation``."""
        workers = self.num_workers
        serving = [(i + self.rotation) % workers for i in range(workers)]
        remaining = [worker_sizes[w] - self.consumed[w] for w in serving]
        taken, next_worker = partition.round_robin_take(remaining, batch_size, batches)
        consumed = list(self.consumed)
        for w, count in zip(serving, taken):
            consumed[w] += count
        return ConsumedCounts(workers, tuple(consumed), (self.rotation + next_worker) % workers)


class ResumeState:
    """The epoch a stream is in and, partway through it, the consumed counts (``None`` at its start)."""

    def __init__(self, fingerprint: str, options: StreamOptions):
        self.fingerprint = fingerprint  # of the catalog: which samples, in which order
        self.settings = {name: getattr(options, name) for name in RESUME_SETTINGS}
        self.epoch = 0
        self.counts: ConsumedCounts | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch``; the same epoch again keeps its counts (so a resumed job may call it)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.counts = None

    def restart(self) -> None:
        """Forget the counts of the current epoch: the next iteration yields all of it."""
        self.counts = None

    def counts_for(self, num_workers: int) -> ConsumedCounts:
        """The counts to continue from with ``num_workers`` logical workers; refuses counts kept for
        another number of workers (their shares of the epoch differ)."""
        if self.counts is None:
            return ConsumedCounts.at_start(num_workers)
        if self.counts.num_workers != num_workers:
            raise ValueError(
                f"the stream is partway through epoch {self.epoch} with counts for {self.counts.num_workers} "
                f"worker(s) (a loaded state or an unfinished iteration) and is read by {num_workers}: resume "
                "with the same num_workers (0 and 1 count as one), or call restart()"
            )
        return self.counts

    def state_dict(self, counts: ConsumedCounts | None = None, *, batch_size: int | None = None) -> dict:
        """The state to save: ``counts`` (a loader's, for what it has received) or this state's own."""
        counts = counts or self.counts or ConsumedCounts.at_start(1)
        return {
            "format": STATE_FORMAT,
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            **self.settings,
            "num_workers": counts.num_workers,
            "consumed": list(counts.consumed),
            "rotation": counts.rotation,
            "batch_size": batch_size,
        }

    def load_state_dict(self, state: dict, *, num_workers: int | None = None, batch_size: int | None = None) -> None:
        """Continue the saved epoch. Refuses a state from another dataset, view or setting, and, when
        a loader passes its ``num_workers`` and ``batch_size``, one saved with other values."""
        if state.get("format") in EARLIER_FORMATS:
            raise ValueError(
                f"the state was saved by an earlier mmdata (format {state['format']!r}), whose check of the dataset "
                "this version cannot repeat: start the epoch afresh (set_epoch) instead of resuming it"
            )
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not an mmdata.stream state (format {state.get('format')!r})")
        if state["fingerprint"] != self.fingerprint:
            raise ValueError("the state was saved for another dataset or view (its samples differ)")
        changed = {name: (state[name], value) for name, value in self.settings.items() if state[name] != value}
        if changed:
            detail = ", ".join(f"{name} was {old!r}, now {new!r}" for name, (old, new) in changed.items())
            raise ValueError(
                f"cannot resume: {detail}. Resuming needs the same topology and options; "
                "to change them, start the next epoch afresh (set_epoch) instead"
            )
        saved_workers, saved_batch = int(state["num_workers"]), state.get("batch_size")
        if num_workers is not None and saved_workers != num_workers:
            raise ValueError(
                f"the state was saved with {saved_workers} DataLoader workers, this loader has "
                f"{num_workers}: resume with the same num_workers (0 and 1 count as one)"
            )
        # With one worker the counts are samples whatever the batch size; with several, batches interleave.
        if num_workers is not None and num_workers > 1 and saved_batch is not None and saved_batch != batch_size:
            raise ValueError(f"the state was saved with batch_size {saved_batch}, this loader has {batch_size}")
        self.epoch = int(state["epoch"])
        self.counts = ConsumedCounts(saved_workers, tuple(int(c) for c in state["consumed"]), int(state["rotation"]))


@runtime_checkable
class Resumable(Protocol):
    """What a :class:`mmdata.stream.StreamingDataLoader` needs of its dataset (a StreamingDataset is one)."""

    resume: ResumeState

    def worker_sizes(self, num_workers: int) -> list[int]: ...
