"""Filter rules over the sample table: each rule decides (a keep-mask), :func:`apply_rules` counts.

Rules are AND-ed in order and the funnel is sequential: each rule's ``dropped`` counts only the rows
that survived the rules before it, so ``rows_in - sum(dropped) == rows_out`` always holds.

Caption lengths count as DataComp's baselines count them (``baselines/apply_filter.py``): words are
the whitespace-separated tokens of Python's ``str.split()`` (Arrow's Unicode whitespace split agrees
with it on every code point), characters are code points of the caption as stored (``len(text)``,
nothing stripped). A null caption has 0 words and 0 characters.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata.schemas.samples import SUCCESS


@dataclass(frozen=True, kw_only=True)
class FilterConfig:
    min_clip_score: float | None = None
    top_fraction: float | None = None  # keep the best F of the scored successful samples (global quantile)
    score_model: str | None = None  # which model's clip_score (None: the default column)
    min_size: int | None = None  # shorter side, pixels
    max_aspect_ratio: float | None = None  # longer side / shorter side
    min_original_size: int | None = None  # shorter side of the image before the download resized it
    max_original_aspect_ratio: float | None = None  # longer / shorter side, before the download resized it
    # keep captions whose caption_language (mmdata annotate --language) is one of these ISO 639 codes;
    # a string is read as a comma-separated list ("en,de")
    language: tuple[str, ...] | None = None
    min_language_score: float | None = None  # keep captions whose caption_language_score is at least this
    min_caption_words: int | None = None
    max_caption_words: int | None = None
    min_caption_chars: int | None = None  # DataComp's "more than 5 characters" is 6
    caption_regex: str | None = None  # keep captions that contain a match
    exclude_caption_regex: str | None = None  # drop captions that contain a match
    drop_duplicates: bool = False  # needs annotations/dedup.parquet (mmdata dedup)
    exclude_contaminated: bool = False  # needs annotations/contamination.parquet (mmdata decontaminate)
    where: str | None = None  # a DuckDB SQL boolean expression over the read_table columns, row by row

    def __post_init__(self) -> None:
        if self.top_fraction is not None and not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction} (0.3 keeps the best 30%)")
        for name in ("min_size", "min_original_size"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name in ("max_aspect_ratio", "max_original_aspect_ratio"):
            value = getattr(self, name)
            if value is not None and value < 1.0:
                raise ValueError(f"{name} must be >= 1 (longer/shorter side), got {value}")
        if self.language is not None:
            object.__setattr__(self, "language", _language_codes(self.language))
        if self.min_language_score is not None and not 0.0 <= self.min_language_score <= 1.0:
            raise ValueError(f"min_language_score must be in [0, 1] (a probability), got {self.min_language_score}")
        for name in ("min_caption_words", "max_caption_words", "min_caption_chars"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if (
            self.min_caption_words is not None
            and self.max_caption_words is not None
            and self.min_caption_words > self.max_caption_words
        ):
            raise ValueError("min_caption_words is above max_caption_words: nothing could pass")
        for name in ("caption_regex", "exclude_caption_regex"):
            pattern = getattr(self, name)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as error:
                    raise ValueError(f"{name} {pattern!r} is not a valid regular expression: {error}") from error
        if self.where is not None and not self.where.strip():
            raise ValueError("where is empty: give a SQL boolean expression such as \"width >= 256\"")

    def to_dict(self) -> dict:
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in asdict(self).items() if value not in (None, False)
        }


_LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}$")


def _language_codes(language) -> tuple[str, ...]:
    """ISO 639 codes from ``"en,de"`` or a sequence, lower-cased, in the order given, without repeats."""
    parts = language.split(",") if isinstance(language, str) else list(language)
    codes = tuple(dict.fromkeys(str(part).strip().lower() for part in parts))
    bad = [code for code in codes if not _LANGUAGE_CODE.match(code)]
    if not codes or bad:
        raise ValueError(
            f"language {language!r}: give ISO 639 codes as fastText lid.176 labels them, comma-separated "
            f"(\"en\", \"en,de,fr\"); not {bad or 'nothing'}"
        )
    return codes


@dataclass(frozen=True)
class Rule:
    """A named decision: ``keep(table)`` returns a bool numpy mask (True = keep) over a table's rows.

    Every rule is row-local (a row's fate depends on that row alone; the one global quantity,
    top_fraction's threshold, is computed before), so rules decide a shard at a time exactly as over the
    whole table. ``columns`` are the columns ``keep`` reads; ``settle``, when set, runs after the last
    batch and raises when the dataset as a whole cannot be filtered by the rule.
    """

    name: str
    keep: Callable[[pa.Table], np.ndarray]
    detail: dict | None = None  # what the rule resolved to (e.g. the top_fraction threshold)
    columns: tuple[str, ...] = ()
    settle: Callable[[], None] | None = None


@dataclass
class Funnel:
    rows_in: int
    steps: list[dict]  # {"rule": name, "dropped": n, ...detail}
    rows_out: int

    def to_dict(self) -> dict:
        return {"rows_in": self.rows_in, "steps": self.steps, "rows_out": self.rows_out}


class RuleCounter:
    """The rules AND-ed in order over batches of rows (a shard at a time), counting one funnel for all."""

    def __init__(self, rules: list[Rule]):
        self.rules = rules
        self.rows_in = self.rows_out = 0
        self.dropped = [0] * len(rules)

    @property
    def columns(self) -> list[str]:
        """Every column the rules read."""
        return list(dict.fromkeys(name for rule in self.rules for name in rule.columns))

    def keep(self, table: pa.Table) -> np.ndarray:
        """The keep-mask of one batch; its rows count towards the funnel."""
        alive = np.ones(table.num_rows, dtype=bool)
        for position, rule in enumerate(self.rules):
            keep = np.asarray(rule.keep(table), dtype=bool)
            if keep.shape != alive.shape:
                raise RuntimeError(f"rule {rule.name} returned {keep.shape[0]} decisions for {table.num_rows} rows")
            self.dropped[position] += int((alive & ~keep).sum())
            alive &= keep
        self.rows_in += table.num_rows
        self.rows_out += int(alive.sum())
        return alive

    def funnel(self) -> Funnel:
        """The funnel of every batch so far; raises where a rule cannot apply to the dataset as a whole."""
        for rule in self.rules:
            if rule.settle is not None:
                rule.settle()
        steps = [{"rule": rule.name, "dropped": dropped, **(rule.detail or {})}
                 for rule, dropped in zip(self.rules, self.dropped)]
        return Funnel(self.rows_in, steps, self.rows_out)


def apply_rules(table: pa.Table, rules: list[Rule]) -> tuple[np.ndarray, Funnel]:
    """AND the rules in order over one table; returns the keep-mask and the funnel that explains it."""
    counter = RuleCounter(rules)
    keep = counter.keep(table)
    return keep, counter.funnel()


Batches = Callable[[list[str]], Iterable[pa.Table]]  # the data's rows in batches, only the columns named


def build_rules(config: FilterConfig, columns: list[str], batches: Batches | None = None) -> list[Rule]:
    """The rules ``config`` asks for, status first; checks that the columns they need exist.

    ``batches`` reads the data for what a rule needs over all rows before it can decide any: the
    top_fraction threshold. Each lambda binds its parameter as a default argument: names reused across
    rules (``words``, ``pattern``) would otherwise all see the last value.
    """
    rules = [Rule("status_success", lambda t: _filled(pc.equal(t.column("status"), SUCCESS)), columns=("status",))]
    needs_score = config.min_clip_score is not None or config.top_fraction is not None
    score = _score_column(config.score_model, columns) if needs_score else None
    if config.min_clip_score is not None:
        threshold = config.min_clip_score
        rules.append(Rule(
            "min_clip_score",
            lambda t, threshold=threshold: _filled(pc.greater_equal(t.column(score), threshold)),
            {"column": score}, (score,),
        ))
    if config.top_fraction is not None:
        if batches is None:
            raise ValueError("top_fraction needs the data to compute its threshold: pass batches")
        rules.append(_top_fraction_rule(score, config.top_fraction, batches))
    if config.min_size is not None:
        size = config.min_size
        rules.append(Rule(
            "min_size",
            lambda t, size=size: _filled(
                pc.greater_equal(pc.min_element_wise(t.column("width"), t.column("height")), size)
            ),
            columns=("width", "height"),
        ))
    if config.max_aspect_ratio is not None:
        ratio = config.max_aspect_ratio
        rules.append(Rule(
            "max_aspect_ratio", lambda t, ratio=ratio: _aspect_ratio(t.column("width"), t.column("height")) <= ratio,
            columns=("width", "height"),
        ))
    if config.min_original_size is not None:
        size = config.min_original_size
        rules.append(_original_rule(
            "min_original_size",
            lambda width, height, size=size: _filled(pc.greater_equal(pc.min_element_wise(width, height), size)),
        ))
    if config.max_original_aspect_ratio is not None:
        ratio = config.max_original_aspect_ratio
        rules.append(_original_rule(
            "max_original_aspect_ratio", lambda width, height, ratio=ratio: _aspect_ratio(width, height) <= ratio,
        ))
    if config.language is not None:
        codes = config.language
        _require(columns, "caption_language", f"language needs {_LANGUAGE_HINT}")
        rules.append(Rule(
            "language",
            lambda t, codes=codes: _filled(pc.is_in(t.column("caption_language"), pa.array(codes, pa.string()))),
            {"languages": list(codes)}, ("caption_language",),
        ))
    if config.min_language_score is not None:
        score_floor = config.min_language_score
        _require(columns, "caption_language_score", f"min_language_score needs {_LANGUAGE_HINT}")
        rules.append(Rule(
            "min_language_score",
            lambda t, score_floor=score_floor: _filled(
                pc.greater_equal(t.column("caption_language_score"), score_floor)
            ),
            columns=("caption_language_score",),
        ))
    if config.min_caption_words is not None:
        words = config.min_caption_words
        rules.append(Rule("min_caption_words", lambda t, words=words: _caption_words(t) >= words,
                          columns=("caption",)))
    if config.max_caption_words is not None:
        words = config.max_caption_words
        rules.append(Rule("max_caption_words", lambda t, words=words: _caption_words(t) <= words,
                          columns=("caption",)))
    if config.min_caption_chars is not None:
        characters = config.min_caption_chars
        rules.append(Rule(
            "min_caption_chars", lambda t, characters=characters: _caption_chars(t) >= characters,
            columns=("caption",),
        ))
    if config.caption_regex is not None:
        pattern = config.caption_regex
        rules.append(Rule(
            "caption_regex",
            lambda t, pattern=pattern: _filled(pc.match_substring_regex(t.column("caption"), pattern)),
            columns=("caption",),
        ))
    if config.exclude_caption_regex is not None:
        pattern = config.exclude_caption_regex
        rules.append(Rule(
            "exclude_caption_regex",
            lambda t, pattern=pattern: ~_filled(pc.match_substring_regex(t.column("caption"), pattern)),
            columns=("caption",),
        ))
    if config.drop_duplicates:
        _require(columns, "duplicate_of", "drop_duplicates needs dedup results: run `mmdata dedup DIR` first")
        rules.append(Rule(
            "drop_duplicates", lambda t: t.column("duplicate_of").is_null().to_numpy(zero_copy_only=False),
            columns=("duplicate_of",),
        ))
    if config.exclude_contaminated:
        _require(columns, "contaminated", "exclude_contaminated needs `mmdata decontaminate DIR --against EVAL` first")
        rules.append(Rule("exclude_contaminated", lambda t: ~_filled(t.column("contaminated")),
                          columns=("contaminated",)))
    if config.where is not None:
        where = WhereMask(config.where, columns)
        rules.append(Rule("where", where, {"expression": config.where}, tuple(where.reads)))
    return rules


class WhereMask:
    """A DuckDB SQL boolean expression evaluated per row (NULL counts as False), on one connection.

    Only row-local expressions are accepted (no subqueries, no window functions), so that a shard at a
    time gives what the whole table would; :attr:`reads` are the columns it names.
    """

    def __init__(self, expression: str, columns: list[str]):
        self.expression, self.columns = expression, list(columns)
        self.statement = f"SELECT __mmdata_row, CAST(({expression}) AS BOOLEAN) FROM samples"
        self.reads = self._referenced_columns()
        self._connection = None

    def __call__(self, table: pa.Table) -> np.ndarray:
        import duckdb

        arrays = {"__mmdata_row": pa.array(np.arange(table.num_rows), pa.int64())}
        arrays.update({name: table.column(name) for name in self.reads})
        if self._connection is None:
            self._connection = duckdb.connect()
        try:
            self._connection.register("samples", pa.table(arrays))
            result = self._connection.sql(self.statement).to_arrow_table()
        except duckdb.Error as error:
            raise self._invalid(error) from error
        finally:
            self._connection.unregister("samples")
        mask = np.zeros(table.num_rows, dtype=bool)
        rows = result.column(0).to_numpy(zero_copy_only=False)
        mask[rows] = _filled(result.column(1))
        return mask

    def _referenced_columns(self) -> list[str]:
        """The table columns the expression names (DuckDB binds names case-insensitively), from its parse tree."""
        import duckdb

        tree = json.loads(duckdb.execute("SELECT json_serialize_sql(?)", [self.statement]).fetchall()[0][0])
        if tree.get("error"):
            raise self._invalid(tree.get("error_message", "syntax error"))
        names, kinds = set(), set()
        _walk(tree["statements"][0]["node"]["select_list"], names, kinds)
        if kinds & {"SUBQUERY", "WINDOW"}:
            raise ValueError(
                f"--where {self.expression!r}: subqueries and window functions are not supported (a row is kept "
                "or dropped on its own columns, a shard at a time); use top_fraction for a global quantile"
            )
        if kinds & {"STAR", "COLUMNS"}:
            return list(self.columns)
        by_lower = {name.lower(): name for name in self.columns}
        return [by_lower[name.lower()] for name in names if name.lower() in by_lower]

    def _invalid(self, error) -> ValueError:
        return ValueError(f"--where {self.expression!r} is not a valid SQL boolean expression over {self.columns}: "
                          f"{error}")


def _walk(node, names: set, kinds: set) -> None:
    """Collect column names and expression classes of a DuckDB parse tree (json_serialize_sql)."""
    if isinstance(node, dict):
        kind = node.get("class")
        if isinstance(kind, str):
            kinds.add(kind)
            if kind == "COLUMN_REF" and node.get("column_names"):
                names.add(node["column_names"][-1])
        for value in node.values():
            _walk(value, names, kinds)
    elif isinstance(node, list):
        for value in node:
            _walk(value, names, kinds)


def where_mask(table: pa.Table, expression: str) -> np.ndarray:
    """Evaluate a DuckDB SQL boolean expression per row of ``table``; NULL counts as False."""
    return WhereMask(expression, table.column_names)(table)


def _top_fraction_rule(score: str, fraction: float, batches: Batches) -> Rule:
    """Keep the ``ceil(fraction * n)`` best of the n scored successful rows (and every row tied with the
    last of them): the threshold is global, over all rows whatever rules come before it."""
    scored = lambda: (_scored_values(table, score) for table in batches(["status", score]))  # noqa: E731
    threshold = kth_largest(scored, lambda count: max(1, int(np.ceil(fraction * count))))
    detail = {"column": score, "fraction": fraction, "threshold": threshold}

    def keep(table: pa.Table) -> np.ndarray:
        if threshold is None:
            return np.zeros(table.num_rows, dtype=bool)
        values = table.column(score).to_numpy(zero_copy_only=False).astype(np.float64)
        return ~np.isnan(values) & (values >= threshold)

    return Rule("top_fraction", keep, detail, (score,))


def _scored_values(table: pa.Table, score: str) -> np.ndarray:
    success = _filled(pc.equal(table.column("status"), SUCCESS))
    values = table.column(score).to_numpy(zero_copy_only=False).astype(np.float64)
    return values[success & ~np.isnan(values)]


_DIGIT_BITS = 16
_CANDIDATES = 1 << 20  # values gathered into memory for the last step of kth_largest, at most


def kth_largest(batches: Callable[[], Iterable[np.ndarray]], k: int | Callable[[int], int]) -> float | None:
    """The ``k``-th largest (1: the largest) of the float values ``batches()`` yields, exactly, in bounded
    memory (None when it yields none); ``k`` may be a function of how many values there are.

    A radix selection over the values' order-preserving 64-bit patterns: one pass over the batches per
    16-bit digit, until at most ``_CANDIDATES`` values share the digits chosen so far; those are then
    gathered and selected. CLIP scores (float32) take two passes, three when over a million tie closely.
    """
    prefix, known_bits, remaining = 0, 0, None
    while True:
        shift = 64 - known_bits - _DIGIT_BITS
        counts = np.zeros(1 << _DIGIT_BITS, dtype=np.int64)
        for values in batches():
            keys = _candidates(values, prefix, known_bits)
            counts += np.bincount(((keys >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.int64),
                                  minlength=1 << _DIGIT_BITS)
        if remaining is None:
            total = int(counts.sum())
            if not total:
                return None
            remaining = k(total) if callable(k) else k
            if not 1 <= remaining <= total:
                raise ValueError(f"k must be between 1 and the number of values ({total}), got {remaining}")
        from_top = np.cumsum(counts[::-1])
        position = int(np.searchsorted(from_top, remaining))
        digit = (1 << _DIGIT_BITS) - 1 - position
        remaining -= int(from_top[position] - counts[digit])
        prefix, known_bits = (prefix << _DIGIT_BITS) | digit, known_bits + _DIGIT_BITS
        if known_bits == 64:
            return _value_of(np.uint64(prefix))
        if counts[digit] <= _CANDIDATES:
            gathered = np.concatenate([_candidates(values, prefix, known_bits) for values in batches()])
            return _value_of(np.partition(gathered, len(gathered) - remaining)[len(gathered) - remaining])


def _candidates(values: np.ndarray, prefix: int, known_bits: int) -> np.ndarray:
    """The order-preserving patterns of ``values`` whose top ``known_bits`` are ``prefix``."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)  # + 0.0: -0.0 sorts as 0.0
    keys = np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(1 << 63))
    if known_bits:
        keys = keys[(keys >> np.uint64(64 - known_bits)) == np.uint64(prefix)]
    return keys


def _value_of(key: np.uint64) -> float:
    bits = key & ~np.uint64(1 << 63) if key >> np.uint64(63) else ~key
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def _score_column(model: str | None, columns: list[str]) -> str:
    name = f"clip_score__{model}" if model else "clip_score"
    if name not in columns:
        scored = [column for column in columns if column.startswith("clip_score")]
        hint = f"available: {scored}" if scored else "run `mmdata score DIR` first"
        raise ValueError(f"no {name} column in the dataset ({hint})")
    return name


_LANGUAGE_HINT = "caption languages: run `mmdata annotate DIR --language` first"


def _require(columns: list[str], column: str, message: str) -> None:
    if column not in columns:
        raise ValueError(message)


def _original_rule(name: str, decide: Callable[[pa.ChunkedArray, pa.ChunkedArray], np.ndarray]) -> Rule:
    """A rule on the size before the download resized it; refuses a dataset whose successful rows record
    none (not a download's output), counted over every batch."""
    columns = ("status", "original_width", "original_height")
    seen = {"successes": 0, "original_width": 0, "original_height": 0}

    def keep(table: pa.Table) -> np.ndarray:
        success = _filled(pc.equal(table.column("status"), SUCCESS))
        seen["successes"] += int(success.sum())
        sides = []
        for column in ("original_width", "original_height"):
            values = table.column(column) if column in table.column_names else pa.chunked_array(
                [pa.nulls(table.num_rows, pa.int32())])
            seen[column] += int(_filled(values.is_valid())[success].sum())
            sides.append(values)
        return decide(*sides)

    def settle() -> None:
        for column in ("original_width", "original_height"):
            if seen["successes"] and not seen[column]:
                raise ValueError(
                    f"no successful sample records {column} (the image size before the download resized it; "
                    "mmdata download and img2dataset write it): use min_size/max_aspect_ratio, which read the "
                    "stored size"
                )

    return Rule(name, keep, columns=columns, settle=settle)


def _filled(mask: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False).astype(bool)


def _caption_chars(table: pa.Table) -> np.ndarray:
    return pc.fill_null(pc.utf8_length(table.column("caption")), 0).to_numpy(zero_copy_only=False)


def _caption_words(table: pa.Table) -> np.ndarray:
    captions = pc.utf8_trim_whitespace(pc.fill_null(table.column("caption"), ""))
    words = pc.list_value_length(pc.utf8_split_whitespace(captions)).to_numpy(zero_copy_only=False)
    empty = pc.equal(captions, "").to_numpy(zero_copy_only=False)
    return np.where(empty, 0, words)


def _aspect_ratio(widths: pa.ChunkedArray, heights: pa.ChunkedArray) -> np.ndarray:
    """Longer / shorter side; infinite where a side is 0 or unknown (such a row never passes)."""
    width = widths.to_numpy(zero_copy_only=False).astype(np.float64)
    height = heights.to_numpy(zero_copy_only=False).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(width, height) / np.minimum(width, height)
    return np.where(np.isnan(ratio), np.inf, ratio)
