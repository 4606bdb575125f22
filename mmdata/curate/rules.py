"""Filter rules over the sample table: each rule decides (a keep-mask), :func:`apply_rules` counts.

Rules are AND-ed in order and the funnel is sequential: each rule's ``dropped`` counts only the rows
that survived the rules before it, so ``rows_in - sum(dropped) == rows_out`` always holds.

Caption lengths count as DataComp's baselines count them (``baselines/apply_filter.py``): words are
the whitespace-separated tokens of Python's ``str.split()`` (Arrow's Unicode whitespace split agrees
with it on every code point), characters are code points of the caption as stored (``len(text)``,
nothing stripped). A null caption has 0 words and 0 characters.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Callable

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
    where: str | None = None  # DuckDB SQL boolean expression over the read_table columns

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
    """A named decision: ``keep(table)`` returns a bool numpy mask (True = keep) over all rows."""

    name: str
    keep: Callable[[pa.Table], np.ndarray]
    detail: dict | None = None  # what the rule resolved to (e.g. the top_fraction threshold)


@dataclass
class Funnel:
    rows_in: int
    steps: list[dict]  # {"rule": name, "dropped": n, ...detail}
    rows_out: int

    def to_dict(self) -> dict:
        return {"rows_in": self.rows_in, "steps": self.steps, "rows_out": self.rows_out}


def apply_rules(table: pa.Table, rules: list[Rule]) -> tuple[np.ndarray, Funnel]:
    """AND the rules in order; returns the keep-mask and the funnel that explains it."""
    alive = np.ones(table.num_rows, dtype=bool)
    steps = []
    for rule in rules:
        keep = np.asarray(rule.keep(table), dtype=bool)
        if keep.shape != alive.shape:
            raise RuntimeError(f"rule {rule.name} returned {keep.shape[0]} decisions for {table.num_rows} rows")
        dropped = int((alive & ~keep).sum())
        alive &= keep
        steps.append({"rule": rule.name, "dropped": dropped, **(rule.detail or {})})
    return alive, Funnel(table.num_rows, steps, int(alive.sum()))


def build_rules(config: FilterConfig, columns: list[str]) -> list[Rule]:
    """The rules ``config`` asks for, status first; checks that the columns they need exist.

    Each lambda binds its parameter as a default argument: names reused across rules (``words``,
    ``pattern``) would otherwise all see the last value.
    """
    rules = [Rule("status_success", lambda t: _filled(pc.equal(t.column("status"), SUCCESS)))]
    needs_score = config.min_clip_score is not None or config.top_fraction is not None
    score = _score_column(config.score_model, columns) if needs_score else None
    if config.min_clip_score is not None:
        threshold = config.min_clip_score
        rules.append(Rule(
            "min_clip_score",
            lambda t, threshold=threshold: _filled(pc.greater_equal(t.column(score), threshold)),
            {"column": score},
        ))
    if config.top_fraction is not None:
        rules.append(_top_fraction_rule(score, config.top_fraction))
    if config.min_size is not None:
        size = config.min_size
        rules.append(Rule(
            "min_size",
            lambda t, size=size: _filled(
                pc.greater_equal(pc.min_element_wise(t.column("width"), t.column("height")), size)
            ),
        ))
    if config.max_aspect_ratio is not None:
        ratio = config.max_aspect_ratio
        rules.append(Rule(
            "max_aspect_ratio", lambda t, ratio=ratio: _aspect_ratio(t.column("width"), t.column("height")) <= ratio
        ))
    if config.min_original_size is not None:
        size = config.min_original_size
        rules.append(Rule(
            "min_original_size",
            lambda t, size=size: _filled(pc.greater_equal(
                pc.min_element_wise(_original(t, "original_width"), _original(t, "original_height")), size
            )),
        ))
    if config.max_original_aspect_ratio is not None:
        ratio = config.max_original_aspect_ratio
        rules.append(Rule(
            "max_original_aspect_ratio",
            lambda t, ratio=ratio: _aspect_ratio(_original(t, "original_width"), _original(t, "original_height"))
            <= ratio,
        ))
    if config.language is not None:
        codes = config.language
        _require(columns, "caption_language", f"language needs {_LANGUAGE_HINT}")
        rules.append(Rule(
            "language",
            lambda t, codes=codes: _filled(pc.is_in(t.column("caption_language"), pa.array(codes, pa.string()))),
            {"languages": list(codes)},
        ))
    if config.min_language_score is not None:
        score_floor = config.min_language_score
        _require(columns, "caption_language_score", f"min_language_score needs {_LANGUAGE_HINT}")
        rules.append(Rule(
            "min_language_score",
            lambda t, score_floor=score_floor: _filled(
                pc.greater_equal(t.column("caption_language_score"), score_floor)
            ),
        ))
    if config.min_caption_words is not None:
        words = config.min_caption_words
        rules.append(Rule("min_caption_words", lambda t, words=words: _caption_words(t) >= words))
    if config.max_caption_words is not None:
        words = config.max_caption_words
        rules.append(Rule("max_caption_words", lambda t, words=words: _caption_words(t) <= words))
    if config.min_caption_chars is not None:
        characters = config.min_caption_chars
        rules.append(Rule(
            "min_caption_chars", lambda t, characters=characters: _caption_chars(t) >= characters
        ))
    if config.caption_regex is not None:
        pattern = config.caption_regex
        rules.append(Rule(
            "caption_regex",
            lambda t, pattern=pattern: _filled(pc.match_substring_regex(t.column("caption"), pattern)),
        ))
    if config.exclude_caption_regex is not None:
        pattern = config.exclude_caption_regex
        rules.append(Rule(
            "exclude_caption_regex",
            lambda t, pattern=pattern: ~_filled(pc.match_substring_regex(t.column("caption"), pattern)),
        ))
    if config.drop_duplicates:
        _require(columns, "duplicate_of", "drop_duplicates needs dedup results: run `mmdata dedup DIR` first")
        rules.append(Rule(
            "drop_duplicates", lambda t: t.column("duplicate_of").is_null().to_numpy(zero_copy_only=False)
        ))
    if config.exclude_contaminated:
        _require(columns, "contaminated", "exclude_contaminated needs `mmdata decontaminate DIR --against EVAL` first")
        rules.append(Rule("exclude_contaminated", lambda t: ~_filled(t.column("contaminated"))))
    if config.where is not None:
        expression = config.where
        rules.append(Rule(
            "where", lambda t, expression=expression: where_mask(t, expression), {"expression": expression}
        ))
    return rules


def where_mask(table: pa.Table, expression: str) -> np.ndarray:
    """Evaluate a DuckDB SQL boolean expression per row; NULL counts as False."""
    import duckdb

    indexed = table.append_column("__mmdata_row", pa.array(np.arange(table.num_rows), pa.int64()))
    connection = duckdb.connect()
    try:
        connection.register("samples", indexed)
        result = connection.sql(f"SELECT __mmdata_row, CAST(({expression}) AS BOOLEAN) FROM samples").to_arrow_table()
    except duckdb.Error as error:
        raise ValueError(
            f"--where {expression!r} is not a valid SQL boolean expression over {table.column_names}: {error}"
        ) from error
    finally:
        connection.close()
    mask = np.zeros(table.num_rows, dtype=bool)
    rows = result.column(0).to_numpy(zero_copy_only=False)
    mask[rows] = _filled(result.column(1))
    return mask


def _top_fraction_rule(score: str, fraction: float) -> Rule:
    detail: dict = {"column": score, "fraction": fraction}

    def keep(table: pa.Table) -> np.ndarray:
        # the quantile is global over the scored successful rows, whatever rules come before it
        success = _filled(pc.equal(table.column("status"), SUCCESS))
        values = table.column(score).to_numpy(zero_copy_only=False).astype(np.float64)
        scored = np.sort(values[success & ~np.isnan(values)])[::-1]
        if not len(scored):
            detail["threshold"] = None
            return np.zeros(table.num_rows, dtype=bool)
        threshold = float(scored[max(0, int(np.ceil(fraction * len(scored))) - 1)])
        detail["threshold"] = threshold
        return ~np.isnan(values) & (values >= threshold)

    return Rule("top_fraction", keep, detail)


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


def _original(table: pa.Table, column: str) -> pa.ChunkedArray:
    """An original-size column; refuses a table whose successful rows record none (not a download's output)."""
    success = _filled(pc.equal(table.column("status"), SUCCESS))
    values = table.column(column) if column in table.column_names else pa.chunked_array([pa.nulls(table.num_rows)])
    if success.any() and not _filled(values.is_valid())[success].any():
        raise ValueError(
            f"no successful sample records {column} (the image size before the download resized it; "
            "mmdata download and img2dataset write it): use min_size/max_aspect_ratio, which read the stored size"
        )
    return values


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
