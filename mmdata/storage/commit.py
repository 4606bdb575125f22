"""Committing one shard (tar, metadata parquet, stats) so that readers see all of it or none of it,
whoever else is writing the same shard.

Two protocols behind one interface (:func:`shard_writer` yields a :class:`ShardSlot`):

**Local folder**: the slot holds the shard's writer lock (an ``flock`` the kernel drops when its
holder dies, :mod:`mmdata.storage.locks`), so a worker of a killed run that is still writing delays
the re-run of its shard instead of racing it. The tar is renamed into place, then the parquet, then
the stats file (the completion marker), each fsynced.

**Object store** (no rename, no locks): every attempt writes its objects under its own names,
``DIR/.attempts/<shard>.<attempt>.tar|parquet``, so no two writers ever write the same object. It
then *claims* the shard by creating ``DIR/.attempts/<shard>.g<generation>.json`` only if absent
(``If-None-Match: *``); the record holds the attempt and the shard's whole stats. The first claim
wins; a loser deletes its own objects. Finalising a claim copies its objects to the shard's names
(server-side), writes ``<shard>_stats.json`` last, naming the attempt and the size and ETag of each
object, and deletes the attempt objects. Finalising is idempotent, so a re-run that finds a claim
whose writer died finishes it instead of redoing the shard. A zombie writer (its run was killed, its
process is not dead yet) that finishes after the shard was committed finds the stats naming another
attempt of its generation or a later one, and removes what it wrote. The generation counts
rewrites of a committed shard (``retry_failed``): each takes the next one.

:func:`finish_dataset` removes every lock, temporary and attempt object once the job is complete.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Iterator

from mmdata.storage.location import Location, staging_file, temp_path_for
from mmdata.storage.locks import LOCK_FOLDER, hold_shard, remove_unheld_temporaries

ATTEMPTS_FOLDER = ".attempts"


class ShardSlot:
    """The right to write one shard: :meth:`staging_path` for the tar being built, then :meth:`commit`."""

    def __init__(self, root: Location, shard: str, committed: dict | None):
        self.root, self.shard = root, shard
        self._committed = committed

    @property
    def stats_location(self) -> Location:
        return self.root / f"{self.shard}_stats.json"

    def committed_stats(self) -> dict | None:
        """The shard's stats if it was committed (by anyone) when the slot was given, else ``None``."""
        return self._committed

    def staging_path(self) -> str:
        raise NotImplementedError

    def commit(self, tar_file: str, parquet: bytes, stats: dict) -> dict:
        """Publish the finished tar (a local file), the parquet bytes and the stats; returns the
        committed stats (another writer's, if it committed first)."""
        raise NotImplementedError

    def uncommit(self) -> None:
        """Make a committed shard incomplete before rewriting it (``retry_failed``)."""
        raise NotImplementedError


class _LocalSlot(ShardSlot):
    def staging_path(self) -> str:
        return temp_path_for(self.root.path + f"/{self.shard}.tar")

    def commit(self, tar_file: str, parquet: bytes, stats: dict) -> dict:
        (self.root / f"{self.shard}.tar").put_file(tar_file)
        (self.root / f"{self.shard}.parquet").write_bytes(parquet)
        self.stats_location.write_json(stats)
        return stats

    def uncommit(self) -> None:
        self.stats_location.remove()


class _ObjectSlot(ShardSlot):
    def __init__(self, root: Location, shard: str, committed: dict | None, claims: dict[int, str], staging: str):
        super().__init__(root, shard, committed)
        self._staging = staging
        self.attempt = uuid.uuid4().hex[:12]
        # Fixed when the attempt starts, so a zombie that outlives a whole re-run still claims its old
        # generation; an uncommitted shard's writer claims past any claim left without its objects.
        if committed:
            self.generation = committed.get("generation", 0) + 1
        else:
            self.generation = max(claims) + 1 if claims else 0

    def staging_path(self) -> str:
        return self._staging

    def commit(self, tar_file: str, parquet: bytes, stats: dict) -> dict:
        attempts = self.root / ATTEMPTS_FOLDER
        objects = {f"{self.shard}.tar": attempts / f"{self.shard}.{self.attempt}.tar",
                   f"{self.shard}.parquet": attempts / f"{self.shard}.{self.attempt}.parquet"}
        objects[f"{self.shard}.tar"].put_file(tar_file)
        objects[f"{self.shard}.parquet"].write_bytes(parquet)
        record = {"attempt": self.attempt, "generation": self.generation, "stats": stats}
        claim = attempts / f"{self.shard}.g{self.generation}.json"
        if not claim.create(json.dumps(record, sort_keys=True, default=str).encode()):
            for target in objects.values():  # another writer claimed first: ours are never published
                target.remove()
            record = claim.read_json()
        return finalize(self.root, self.shard, record)

    def uncommit(self) -> None:
        """Nothing to undo first: the next generation's claim replaces the shard when it is finalised."""


def finalize(root: Location, shard: str, record: dict) -> dict:
    """Publish a claim's objects under the shard's names and write its stats last; idempotent.

    A claim older than what is committed (a zombie's) is discarded with its objects instead."""
    stats_location = root / f"{shard}_stats.json"
    attempts = root / ATTEMPTS_FOLDER
    attempt, generation = record["attempt"], record["generation"]
    sources = {f"{shard}.tar": attempts / f"{shard}.{attempt}.tar",
               f"{shard}.parquet": attempts / f"{shard}.{attempt}.parquet"}
    current = _read_json(stats_location)
    if current is not None and current.get("attempt") == attempt:
        return current
    if current is not None and current.get("generation", 0) >= generation:
        for source in sources.values():
            source.remove()
        (attempts / f"{shard}.g{generation}.json").remove()
        return current
    if current is not None:
        stats_location.remove()  # an older generation: unreadable until the new one is complete
    published = {}
    try:
        for name, source in sources.items():
            target = root / name
            source.copy_to(target)
            published[name] = target.info()
    except FileNotFoundError:
        # Another writer finalised this claim meanwhile and removed its objects: its stats say so.
        current = _read_json(stats_location)
        if current is not None and current.get("attempt") == attempt:
            return current
        raise
    stats = {**record["stats"], "attempt": attempt, "generation": generation,
             "objects": {name: {"size": info["size"], "etag": info["etag"]} for name, info in published.items()}}
    stats_location.write_json(stats)
    for source in sources.values():
        source.remove()
    return stats


@contextlib.contextmanager
def shard_writer(root: Location, shard: str) -> Iterator[ShardSlot]:
    """The slot to write ``shard`` of the dataset at ``root``. Locally it holds the writer lock
    (waiting for a live holder) and starts clean; on an object store it finishes an earlier
    writer's claim that was never finalised, then gives a fresh attempt."""
    stats_location = root / f"{shard}_stats.json"
    if root.is_local:
        root.make_dirs()
        with hold_shard(root.local_path(), shard):
            yield _LocalSlot(root, shard, _read_json(stats_location))
        return
    committed, claims = _read_json(stats_location), _claims(root, shard)  # two requests per shard, no more
    if committed is None and claims:
        committed = _finish_orphan_claim(root, shard, claims)
    with staging_file(".tar") as staging:
        yield _ObjectSlot(root, shard, committed, claims, staging)


def finish_dataset(root: Location) -> None:
    """Remove what only writers need (locks, temporaries, attempt objects and claims): called once
    every shard is committed, before the manifest, so a complete dataset holds only data."""
    if root.is_local:
        remove_unheld_temporaries(root.local_path())
        (root / LOCK_FOLDER).remove_tree()
    (root / ATTEMPTS_FOLDER).remove_tree()


def discard_unheld(root: Location) -> None:
    """Before a (re-)run: remove the temporaries no live writer holds (local; object stores have none,
    and their attempt objects stay until :func:`finish_dataset`, as a zombie may still claim)."""
    if root.is_local:
        remove_unheld_temporaries(root.local_path())


def _finish_orphan_claim(root: Location, shard: str, claims: dict[int, str]) -> dict | None:
    """Finalise the newest claim of ``shard`` whose objects are all there (its writer died after
    claiming); returns the stats it committed, or ``None``."""
    attempts = root / ATTEMPTS_FOLDER
    record = _read_json(attempts / claims[max(claims)])
    if record is not None and all((attempts / f"{shard}.{record['attempt']}.{kind}").exists()
                                  for kind in ("tar", "parquet")):
        return finalize(root, shard, record)
    return None


def _claims(root: Location, shard: str) -> dict[int, str]:
    prefix = f"{shard}.g"
    found = {}
    for name in (root / ATTEMPTS_FOLDER).names(".json"):
        if name.startswith(prefix) and name[len(prefix):-len(".json")].isdigit():
            found[int(name[len(prefix):-len(".json")])] = name
    return found


def _read_json(target: Location) -> dict | None:
    try:
        return target.read_json()
    except FileNotFoundError:
        return None
