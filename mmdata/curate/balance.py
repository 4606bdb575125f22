"""MetaCLIP balancing as a view: keep every sample of a rare concept, a random ``t`` of a common one.

The algorithm is MetaCLIP's (Xu et al., *Demystifying CLIP Data*, 2023; facebookresearch/MetaCLIP
``metaclip/substr_matching.py``, ``metaclip/balancing.py``, ``metaclip/curation/curate.py``):

1. **Match.** Each caption is matched against an entry list (MetaCLIP's ``metadata.json``: 500k
   WordNet and Wikipedia terms) by substring search with an Aho-Corasick automaton. Matching is
   case-sensitive and on word boundaries: the caption is wrapped in spaces, ``, . ; : ? ! ``` ` get
   a space on each side and tabs and line breaks become spaces; an entry gets a space before and
   after unless it begins (ends) with punctuation or a CJK/Thai/Lao/Burmese/Khmer/Tibetan character.
   So ``dog`` matches ``A dog.`` but not ``dogs`` nor ``Dog``; ``hot dog`` and ``dog`` both match
   ``a hot dog``; a sample counts once per entry however often the entry occurs in its caption.
2. **Count.** ``count(e)``: the pool samples matching entry ``e``.
3. **Sample.** Each (sample, matched entry) pair draws ``u`` in [0, 1) and is a *keep* when
   ``u < min(1, t / count(e))``; a sample is kept when any of its pairs is, i.e. with probability
   ``1 - prod(1 - p(e))`` over its entries (MetaCLIP 2's ``curate``). Samples matching no entry
   are dropped.

A sample matching one entry is kept with probability ``min(1, t / count(e))``, so an entry whose
samples match nothing else keeps ``min(count(e), t)`` in expectation (binomial spread). In general
entry ``e`` keeps ``sum over its samples s of 1 - prod_{f in s}(1 - p(f))`` in expectation: never
less than ``min(count(e), t)``. Tail entries (``count <= t``) keep every sample; a head entry also
keeps the samples that another entry of the same caption kept: with ``r`` of its samples also
matching tail entries it keeps ``t + r * (1 - t / count(e))``, so head counts end somewhat above ``t``.

The draw is a hash of (the sample's ``uid``, the entry's text, ``seed``): the same inputs give the
same view on every executor and re-run, a sample keeps its decision when the entry list is
reordered, and another seed gives another draw. MetaCLIP balances last: after filtering and dedup,
hence ``from_view``.

Work: two passes over the shards as executor tasks (match and count; then match again and decide),
each reading only the columns it needs of one shard. The automaton is built once per worker process
and entry list (it is cached, keyed by the list's SHA-256) from the list shared once through
:meth:`Executor.share`. The driver holds the per-entry counts (one int per entry) and each shard's
totals, folded in as they arrive; a sampling task writes its kept rows to a part file of its own,
and the driver streams the parts into the view in shard order (one part in memory at a time), then
deletes them: memory is bounded whatever the dataset's size.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import string
from dataclasses import dataclass
from typing import Callable, Iterator

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata import layout
from mmdata.atomic import ParquetPieces, parquet_writer, write_parquet
from mmdata.curate.view import existing_view, view_batches, view_path
from mmdata.execution import Execution, Executor, StageProgress, sized, using
from mmdata.execution.progress import COUNT
from mmdata.options import stage_settings
from mmdata.schemas.balance import BALANCE_KEY, ENTRY_COUNTS_SCHEMA
from mmdata.schemas.samples import SUCCESS
from mmdata.schemas.views import FUNNEL_KEY, RULES_KEY, VIEW_SCHEMA
from mmdata.storage import Location, location, read_parquet, read_parquet_schema

BALANCE_DIR = "balance"
_VIEW_BATCH_ROWS = 65_536


@dataclass(frozen=True, kw_only=True)
class BalanceConfig:
    metadata: str  # the entry list: a text file, one entry per line, or a JSON list (MetaCLIP's metadata.json)
    t: int = 20_000  # per-entry cap: an entry matched by more samples keeps about t of them (MetaCLIP: 20k / 170k)
    from_view: str | None = None  # balance only this view's samples (after filter and dedup); None: every success
    seed: int = 0  # another seed, another draw

    def __post_init__(self) -> None:
        if not self.metadata:
            raise ValueError("metadata is required: the entry list (one entry per line), e.g. --metadata entries.txt")
        object.__setattr__(self, "metadata", str(self.metadata))
        if isinstance(self.t, bool) or not isinstance(self.t, int) or self.t < 1:
            raise ValueError(f"t must be a positive integer (samples kept per entry), got {self.t!r} "
                             "(MetaCLIP uses 20000)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")


@dataclass
class BalanceResult:
    """What :func:`balance` wrote; the view itself stays on disk (``read_view(root, name)`` reads it whole)."""

    rows: int  # rows of the view: the kept samples
    entry_counts: pa.Table  # ENTRY_COUNTS_SCHEMA: one row per entry
    funnel: dict  # rows_in, steps (status_success, [from_view,] matched_any_entry, balanced), rows_out
    path: Location  # the view
    entry_counts_path: Location


def entry_counts_path(root: layout.Root, view: str) -> Location:
    """Where the per-entry table of balanced view ``view`` lives (beside, not inside, ``views/``)."""
    view_path(root, view)  # the same name rules
    return layout.dataset(root) / BALANCE_DIR / f"{view}.entry_counts.parquet"


# --- the entry list and the matching -----------------------------------------------------------------

_WRAPPED = ",.;:?!`"
_SPACING = str.maketrans({**{mark: f" {mark} " for mark in _WRAPPED}, "\t": " ", "\n": " ", "\r": " "})
_CJK_PUNCTUATION = set("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")
_NO_SPACE_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF), (0x2E80, 0x2EFF), (0x2F00, 0x2FDF),
    (0x2FF0, 0x2FFF),  # CJK
    (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x0F00, 0x0FFF),  # Thai ... Tibetan
)


def read_entries(path: Location) -> list[str]:
    """The entry list at ``path``: one entry per line, or a JSON list of strings (a ``.json`` file);
    each stripped, blank lines and repeats dropped (the first occurrence keeps its place)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no entry list at {path}: pass --metadata FILE, a text file with one entry per line "
            "(or a JSON list of strings such as MetaCLIP's metadata.json)"
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"entry list {path} is not UTF-8 text ({error}); write one entry per line in UTF-8") from None
    if path.name.endswith(".json"):
        try:
            raw = json.loads(text)
        except ValueError as error:
            raise ValueError(f"entry list {path} is not valid JSON ({error}); give a JSON list of strings") from None
        if not isinstance(raw, list) or not all(isinstance(entry, str) for entry in raw):
            raise ValueError(f"entry list {path} must be a JSON list of strings (like MetaCLIP's metadata.json)")
    else:
        raw = text.splitlines()
    entries = list(dict.fromkeys(entry.strip() for entry in raw if entry.strip()))
    if not entries:
        raise ValueError(f"entry list {path} holds no entry: write one entry (a word or phrase) per line")
    return entries


def spaced_text(text: str) -> str:
    """A caption as MetaCLIP matches it: wrapped in spaces, punctuation spaced off, no tabs or line breaks."""
    return f" {text} ".translate(_SPACING)


def spaced_entry(entry: str) -> str:
    """An entry as MetaCLIP searches for it: a space on each side that does not end in punctuation or a
    script written without spaces, so that entries match whole words."""
    before = "" if _binds_tightly(entry[0]) else " "
    after = "" if _binds_tightly(entry[-1]) else " "
    return f"{before}{entry}{after}"


def _binds_tightly(char: str) -> bool:
    if char.isascii():
        return char in string.punctuation
    if char in _CJK_PUNCTUATION:
        return True
    code = ord(char)
    return any(low <= code <= high for low, high in _NO_SPACE_RANGES)


class EntryMatcher:
    """The Aho-Corasick automaton of an entry list, and each entry's 64-bit hash (for the keep draw)."""

    def __init__(self, entries: list[str]):
        self._entries = entries
        self._automaton = ahocorasick.Automaton()
        for entry_id, entry in enumerate(entries):
            self._automaton.add_word(spaced_entry(entry), entry_id)
        self._automaton.make_automaton()

    @functools.cached_property
    def entry_hashes(self) -> np.ndarray:
        """uint64 per entry, of its text: a sample's draw for an entry does not depend on the list's order."""
        return np.fromiter((hash64(entry) for entry in self._entries), dtype=np.uint64, count=len(self._entries))

    def matches(self, captions: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """``(row, entry_id)`` int64 arrays: each distinct entry each caption matches, rows ascending."""
        rows: list[int] = []
        entry_ids: list[int] = []
        search = self._automaton.iter
        for row, caption in enumerate(captions):
            if not caption:
                continue
            found = {entry_id for _, entry_id in search(spaced_text(caption))}
            rows.extend([row] * len(found))
            entry_ids.extend(sorted(found))
        return np.asarray(rows, dtype=np.int64), np.asarray(entry_ids, dtype=np.int64)


_cached_matcher: tuple[str, EntryMatcher] | None = None


def _matcher(encoded_entries: np.ndarray, fingerprint: str) -> EntryMatcher:
    """This process's matcher of the entry list with SHA-256 ``fingerprint``, built on first use."""
    global _cached_matcher
    if _cached_matcher is None or _cached_matcher[0] != fingerprint:
        _cached_matcher = None  # free the last list's automaton before building the next
        _cached_matcher = (fingerprint, EntryMatcher(json.loads(bytes(encoded_entries))))
    return _cached_matcher[1]


def _forget_matcher() -> None:
    global _cached_matcher
    _cached_matcher = None


# --- the keep draw ----------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic): a bijective avalanche."""
    mixed = values + _GOLDEN
    mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return mixed ^ (mixed >> np.uint64(31))


def draws(uid_hashes: np.ndarray, entry_hashes: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) draws, one per (uid hash, entry hash) pair (aligned uint64 arrays), fixed by ``seed``."""
    seed_hash = _mix(np.asarray([seed], dtype=np.uint64))
    mixed = _mix(uid_hashes.astype(np.uint64) ^ _mix(entry_hashes.astype(np.uint64) ^ seed_hash))
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def keep_samples(sample_count: int, uids: list[str], rows: np.ndarray, entry_ids: np.ndarray,
                 entry_hashes: np.ndarray, probability: np.ndarray, seed: int) -> np.ndarray:
    """The bool keep mask of ``sample_count`` samples from their (row, entry_id) matches: a sample is
    kept when the draw of any of its matches falls under that entry's probability."""
    uid_hashes = np.fromiter((hash64(uid) for uid in uids), dtype=np.uint64, count=len(uids))
    kept_pairs = draws(uid_hashes[rows], entry_hashes[entry_ids], seed) < probability[entry_ids]
    keep = np.zeros(sample_count, dtype=bool)
    keep[rows[kept_pairs]] = True
    return keep


# --- one shard ----------------------------------------------------------------------------------------

@dataclass
class ShardBalance:
    """One shard's counts; ``entry_ids``/``entry_counts``: the entries matched by its pool (counting
    pass) or by its kept samples (sampling pass); ``kept_rows``: the kept samples as view rows."""

    shard: str
    rows: int = 0
    successes: int = 0
    view_rows: int = 0  # rows of from_view in this shard
    pool: int = 0
    matched: int = 0
    kept: int = 0
    entry_ids: np.ndarray | None = None
    entry_counts: np.ndarray | None = None
    kept_rows: pa.Table | None = None

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in ("rows", "successes", "view_rows", "pool", "matched", "kept")}


def balance_shard(root: Location, shard: str, view_keys: pa.Array | None, encoded_entries: np.ndarray,
                  fingerprint: str, probability: np.ndarray | None = None, seed: int = 0) -> ShardBalance:
    """Match one shard's pool (its successful samples, of ``view_keys`` when given) against the entry
    list; without ``probability``, count the matches per entry, with it, decide which samples stay."""
    path = layout.parquet_path(root, shard)
    result = ShardBalance(shard, view_rows=0 if view_keys is None else len(view_keys))
    if view_keys is not None and len(view_keys) == 0:  # nothing of this shard is in the view: count its rows only
        statuses = read_parquet(path, columns=["status"]).column("status")
        result.rows, result.successes = len(statuses), _count_true(pc.equal(statuses, SUCCESS))
        return result
    present = set(read_parquet_schema(path).names)
    wanted = ["key", "status", "caption"]
    if probability is not None:
        wanted += ["uid", "tar_offset", "tar_size"] + ([] if "uid" in present else ["url"])
    table = read_parquet(path, columns=[name for name in wanted if name in present])
    result.rows = table.num_rows
    success = pc.fill_null(pc.equal(table.column("status"), SUCCESS), False)
    result.successes = _count_true(success)
    if view_keys is not None:
        success = pc.and_(success, pc.is_in(table.column("key"), value_set=view_keys))
    pool = table.filter(success)
    result.pool = pool.num_rows
    captions = pool.column("caption").to_pylist() if "caption" in pool.column_names else [None] * pool.num_rows
    matcher = _matcher(encoded_entries, fingerprint)
    rows, entry_ids = matcher.matches(captions)
    result.matched = len(np.unique(rows))
    if probability is None:
        result.entry_ids, result.entry_counts = np.unique(entry_ids, return_counts=True)
        return result
    uids = _uids(pool, captions)
    keep = keep_samples(pool.num_rows, uids, rows, entry_ids, matcher.entry_hashes, probability, seed)
    result.kept = int(keep.sum())
    result.entry_ids, result.entry_counts = np.unique(entry_ids[keep[rows]], return_counts=True)
    result.kept_rows = _view_rows(pool, keep, uids, shard)
    return result


def _uids(pool: pa.Table, captions: list[str | None]) -> list[str]:
    """The samples' uids; img2dataset metadata has none: made from url and caption as read_table does."""
    if "uid" in pool.column_names:
        return pool.column("uid").to_pylist()
    urls = pool.column("url").to_pylist() if "url" in pool.column_names else [None] * pool.num_rows
    return [layout.sample_uid(url, caption) for url, caption in zip(urls, captions)]


def _view_rows(pool: pa.Table, keep: np.ndarray, uids: list[str], shard: str) -> pa.Table:
    """VIEW_SCHEMA columns of the kept samples (the byte range stays null where the metadata has none)."""
    kept = pool.filter(pa.array(keep))
    columns = {
        "key": kept.column("key"),
        "uid": pa.array([uid for uid, stay in zip(uids, keep) if stay], pa.string()),
        "shard": pa.array([shard] * kept.num_rows, pa.string()),
    }
    for name in ("tar_offset", "tar_size"):
        columns[name] = kept.column(name) if name in kept.column_names else pa.nulls(kept.num_rows, pa.int64())
    return pa.table(columns)


def sample_shard(root: Location, shard: str, view_keys: pa.Array | None, encoded_entries: np.ndarray,
                 fingerprint: str, probability: np.ndarray, seed: int, parts: Location) -> ShardBalance:
    """:func:`balance_shard`'s sampling pass, the kept rows written to ``parts/<shard>.parquet`` (none when
    it keeps nothing) rather than returned: the driver then streams them into the view in shard order."""
    result = balance_shard(root, shard, view_keys, encoded_entries, fingerprint, probability, seed)
    if result.kept:
        write_parquet(result.kept_rows, _part_path(parts, shard), VIEW_SCHEMA)
    result.kept_rows = None
    return result


def _part_path(parts: Location, shard: str) -> Location:
    return parts / f"{shard}.parquet"


def _count_true(mask) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


# --- the stage ----------------------------------------------------------------------------------------

def balance(root: layout.Root, config: BalanceConfig | None = None, *, view: str = "balanced",
            execution: Execution = None, storage_options: dict | None = None, **options) -> BalanceResult:
    """Balance dataset ``root``'s captions over an entry list (MetaCLIP) into view ``view``.

    Pass a :class:`BalanceConfig` or its options flat (``balance(root, metadata="entries.txt",
    t=20000, from_view="clean")``), and where the work runs as ``execution=`` or the flat
    ``executor``/``workers``/``ray_address``. Writes ``DIR/balance/<view>.entry_counts.parquet``
    (per-entry counts before and after), then the view ``DIR/views/<view>.parquet`` with its rules
    and funnel, like a filter's. ``root`` and ``metadata`` may be URLs; ``storage_options`` go to
    their filesystem.
    """
    config, execution = stage_settings(BalanceConfig, "balance", config, execution, options)
    root = layout.dataset(root, storage_options)
    output = view_path(root, view)
    if config.from_view == view:
        raise ValueError(f"from_view and view are both {view!r}: write the balanced view under another name")
    shards = layout.complete_shards(root)
    if not shards:
        raise ValueError(f"{root} holds no complete shard: nothing to balance (mmdata download first)")
    source = _source_view(root, config.from_view)
    entries = read_entries(location(config.metadata, storage_options))
    parts = root / BALANCE_DIR / f".{view}.parts"
    parts.remove_tree()  # an interrupted run's
    passes = _Passes(root, shards, source, entries, parts)
    try:
        with using(sized(execution, len(shards))) as executor:
            passes.run(executor, config.t, config.seed)
    except BaseException:
        parts.remove_tree()
        raise
    finally:
        _forget_matcher()  # the inline executor built it in this process

    totals = passes.totals
    funnel = _funnel(totals, config, len(entries))
    summary = {
        "metadata": config.metadata, "entries": len(entries), "entries_sha256": passes.fingerprint,
        "t": config.t, "seed": config.seed, "from_view": config.from_view,
        "pool": totals["pool"], "matched": totals["matched"], "kept": totals["kept"],
        "entries_matched": int((passes.counts > 0).sum()), "head_entries": int((passes.counts > config.t).sum()),
        "entry_counts": f"{BALANCE_DIR}/{view}.entry_counts.parquet",
    }
    balance_metadata = {BALANCE_KEY: json.dumps(summary, sort_keys=True).encode()}
    counts_path = entry_counts_path(root, view)
    entry_table = pa.table({
        "entry_id": pa.array(np.arange(len(entries), dtype=np.int32)),
        "entry": pa.array(entries, pa.string()),
        "count": pa.array(passes.counts),
        "probability": pa.array(passes.probability),
        "kept": pa.array(passes.kept_counts),
    }).replace_schema_metadata(balance_metadata)
    entry_table = write_parquet(entry_table, counts_path, ENTRY_COUNTS_SCHEMA)

    settings = ("metadata", "entries", "entries_sha256", "t", "seed", "from_view")
    rules = {
        "config": {"stage": "balance", **{name: summary[name] for name in settings}},
        "rules": [{key: value for key, value in step.items() if key != "dropped"} for step in funnel["steps"]],
    }
    if source is not None:
        rules["from_view_rules"] = json.loads((read_parquet_schema(source).metadata or {}).get(RULES_KEY, b"{}"))
    view_metadata = {
        RULES_KEY: json.dumps(rules, sort_keys=True).encode(),
        FUNNEL_KEY: json.dumps(funnel, sort_keys=True).encode(),
        **balance_metadata,
    }
    try:
        with parquet_writer(output, VIEW_SCHEMA) as writer:
            passes.write_view(writer)
            writer.set_metadata(view_metadata)
    finally:
        parts.remove_tree()
    return BalanceResult(writer.rows, entry_table, funnel, output, counts_path)


class _Passes:
    """The two passes over the shards and what the driver folds from them: per-entry counts before
    (``counts``) and after (``kept_counts``), the sample totals, and how many samples each shard kept
    (the kept rows themselves wait in ``parts``, one file per shard, until :meth:`write_view`)."""

    def __init__(self, root: Location, shards: list[str], source: Location | None, entries: list[str],
                 parts: Location):
        self.root, self.shards, self.source, self.parts = root, shards, source, parts
        self.encoded = np.frombuffer(json.dumps(entries).encode(), dtype=np.uint8)
        self.fingerprint = hashlib.sha256(self.encoded).hexdigest()
        self.counts = np.zeros(len(entries), dtype=np.int64)
        self.kept_counts = np.zeros(len(entries), dtype=np.int64)
        self.probability = np.ones(len(entries), dtype=np.float64)
        self.totals: collections.Counter = collections.Counter()
        self._kept: dict[str, int] = {}  # shard -> kept samples, for the shards that kept any

    def run(self, executor: Executor, t: int, seed: int) -> None:
        shared_entries = executor.share(self.encoded)
        counted = self._pass(executor, balance_shard, "balance: matching", "matched", self.counts,
                             (shared_entries, self.fingerprint))
        self.probability = np.minimum(1.0, t / np.maximum(self.counts, 1)).astype(np.float64)
        arguments = (shared_entries, self.fingerprint, executor.share(self.probability), seed, self.parts)
        self.totals = self._pass(executor, sample_shard, "balance: sampling", "kept", self.kept_counts, arguments)
        if any(counted[name] != self.totals[name] for name in ("rows", "successes", "pool", "matched")):
            raise RuntimeError(f"{self.root} changed while it was balanced (the passes saw {dict(counted)} and then "
                               f"{dict(self.totals)}); re-run mmdata balance")

    def write_view(self, writer: ParquetPieces) -> None:
        """The kept rows of every shard, in shard order, one shard's part in memory at a time."""
        for shard in self.shards:
            if self._kept.get(shard):
                part = read_parquet(_part_path(self.parts, shard))
                if part.num_rows != self._kept[shard]:
                    raise RuntimeError(f"balance part of shard {shard} holds {part.num_rows} rows, not "
                                       f"{self._kept[shard]}: another balance into this view ran; re-run it")
                writer.write(part)

    def _pass(self, executor: Executor, task: Callable[..., ShardBalance], description: str, counter: str,
              into: np.ndarray, arguments: tuple) -> collections.Counter:
        totals: collections.Counter = collections.Counter()

        def fold(result: ShardBalance) -> None:
            if result.entry_ids is not None:
                into[result.entry_ids] += result.entry_counts
            totals.update(result.counters())
            if result.kept:
                self._kept[result.shard] = result.kept
            result.entry_ids = result.entry_counts = None  # the executor holds every result

        progress = StageProgress(
            description, unit="sample", tasks=len(self.shards),
            final_counts=lambda result: (result.shard, {COUNT: result.rows, counter: getattr(result, counter)}),
        )
        pools = _pool_keys(self.root, self.shards, self.source)
        tasks = ((self.root, shard, keys, *arguments) for shard, keys in pools)
        with progress:
            executor.run_tasks(task, tasks, progress=progress, on_result=fold)
        return totals


def _funnel(totals: collections.Counter, config: BalanceConfig, entry_count: int) -> dict:
    """The balance funnel in the filter's format: each step's ``dropped`` counts the rows that survived
    the steps before it."""
    steps = [{"rule": "status_success", "dropped": totals["rows"] - totals["successes"]}]
    if config.from_view is not None:
        step = {"rule": "from_view", "view": config.from_view, "dropped": totals["successes"] - totals["pool"]}
        if totals["view_rows"] != totals["pool"]:  # keys the view names that are no successful sample here
            step["view_rows_not_found"] = totals["view_rows"] - totals["pool"]
        steps.append(step)
    steps.append({"rule": "matched_any_entry", "entries": entry_count,
                  "dropped": totals["pool"] - totals["matched"]})
    steps.append({"rule": "balanced", "t": config.t, "seed": config.seed,
                  "dropped": totals["matched"] - totals["kept"]})
    return {"rows_in": totals["rows"], "steps": steps, "rows_out": totals["kept"]}


def _source_view(root: Location, name: str | None) -> Location | None:
    return None if name is None else existing_view(root, name)


_NO_KEYS = pa.array([], pa.string())


def _pool_keys(root: Location, shards: list[str], source: Location | None) -> Iterator[tuple[str, pa.Array | None]]:
    """Each complete shard with the keys ``source`` selects in it (None: no view, every success),
    streamed from the view in batches: views are written grouped by shard, in shard order."""
    if source is None:
        yield from ((shard, None) for shard in shards)
        return
    complete = set(shards)
    groups = _view_groups(source)

    def next_group() -> tuple[str, pa.Array] | None:
        group = next(groups, None)
        if group is not None and group[0] not in complete:
            raise ValueError(f"view {source.name} selects samples of shard {group[0]}, which is not a complete "
                             f"shard of {root}: re-make the view (mmdata filter) from this dataset")
        return group

    pending = next_group()
    for shard in shards:
        if pending is not None and pending[0] == shard:
            yield shard, pending[1]
            pending = next_group()
        else:
            yield shard, _NO_KEYS


def _view_groups(source: Location) -> Iterator[tuple[str, pa.Array]]:
    """``(shard, keys)`` runs of the view, one per shard, in shard order; raises when the view is not
    grouped that way (then a shard's keys could not be handed to its task whole)."""
    current, chunks = None, []
    for batch in view_batches(source, ["key", "shard"], _VIEW_BATCH_ROWS):
        shard_names = batch.column(1).to_numpy(zero_copy_only=False)
        starts = [0, *(np.flatnonzero(shard_names[1:] != shard_names[:-1]) + 1).tolist()]
        for start, end in zip(starts, [*starts[1:], len(shard_names)]):
            shard = shard_names[start]
            if shard != current:
                if current is not None:
                    if layout.shard_order(shard) <= layout.shard_order(current):
                        raise ValueError(
                            f"view {source.name} is not grouped by shard in shard order (shard {shard} after "
                            f"{current}): balance needs a view in shard order, as mmdata filter writes them"
                        )
                    yield current, pa.concat_arrays(chunks)  # a copy: a pickled slice carries its batch
                current, chunks = shard, []
            chunks.append(batch.column(0).slice(start, end - start))
    if current is not None:
        yield current, pa.concat_arrays(chunks)
