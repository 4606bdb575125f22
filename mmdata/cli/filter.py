"""``mmdata filter DIR --view NAME [rules]``: select samples by AND-ed rules into DIR/views/NAME.parquet."""

from __future__ import annotations

import argparse

from mmdata.cli._flags import add_storage_flag, given, storage_options
from mmdata.curate.presets import PRESET_NAMES

_VALUE_FLAGS = (
    ("--min-clip-score", "min_clip_score", float, "keep samples whose clip_score is at least this"),
    ("--top-fraction", "top_fraction", float, "keep the best F (0-1] of the scored samples (global quantile)"),
    ("--score-model", "score_model", str, "model id of the clip_score to use when several models scored DIR"),
    ("--min-size", "min_size", int, "keep images whose shorter side has at least this many pixels"),
    ("--max-aspect-ratio", "max_aspect_ratio", float, "keep images whose longer/shorter side ratio is at most this"),
    ("--min-original-size", "min_original_size", int,
     "keep images whose shorter side had at least this many pixels before the download resized them"),
    ("--max-original-aspect-ratio", "max_original_aspect_ratio", float,
     "keep images whose longer/shorter side ratio was at most this before the download resized them"),
    ("--language", "language", str, "keep captions whose caption_language is one of these ISO 639 codes, "
     "comma-separated: en or en,de,fr (needs `mmdata annotate DIR --language`)"),
    ("--min-language-score", "min_language_score", float,
     "keep captions whose caption_language_score (0-1) is at least this (needs `mmdata annotate DIR --language`)"),
    ("--min-caption-words", "min_caption_words", int,
     "keep captions with at least this many whitespace-separated words (Python's str.split(), as DataComp)"),
    ("--max-caption-words", "max_caption_words", int, "keep captions with at most this many words"),
    ("--min-caption-chars", "min_caption_chars", int,
     "keep captions with at least this many characters (DataComp's \"more than 5\" is 6)"),
    ("--caption-regex", "caption_regex", str, "keep captions containing a match of this regular expression"),
    ("--exclude-caption-regex", "exclude_caption_regex", str,
     "drop captions containing a match of this regular expression"),
    ("--where", "where", str, "DuckDB SQL boolean expression over the `mmdata table` columns, e.g. \"width >= 256 "
     "AND url LIKE '%%.org/%%'\" (double-quote names holding '-', such as \"clip_score__ViT-B-32__openai\")"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "filter",
        help="select samples by rules into a view (nothing is copied)",
        description="Write DIR/views/NAME.parquet: the successful samples that pass every rule, with the rules "
        "and a per-rule funnel in its metadata. Materialise it with `mmdata reshard` or stream it directly.",
    )
    parser.add_argument("dataset", help="dataset folder or URL (s3://bucket/ds)")
    parser.add_argument("--view", required=True, help="name of the view to write")
    parser.add_argument("--preset", choices=PRESET_NAMES,
                        help="start from a published baseline's rules: datacomp-basic (English, > 2 words, > 5 "
                        "characters, original shorter side >= 200, aspect <= 3), laion2b (clip_score >= 0.28 of "
                        "OpenAI ViT-B/32, English), datacomp-clip-top30 (top 30%% by clip_score); rules you add "
                        "join them, and a rule you set that the preset also sets takes your value")
    parser.add_argument("--preset-any-model", action="store_true", default=None,
                        help="apply a preset's clip_score threshold to scores of another model than it was "
                        "calibrated for")
    for flag, name, value_type, text in _VALUE_FLAGS:
        parser.add_argument(flag, dest=name, type=value_type, help=text)
    parser.add_argument("--drop-duplicates", action="store_true", default=None,
                        help="drop samples that `mmdata dedup` marked")
    parser.add_argument("--exclude-contaminated", action="store_true", default=None,
                        help="drop samples that `mmdata decontaminate` marked")
    add_storage_flag(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.curate.view import format_funnel, write_view

    options = given(arguments, (*(name for _, name, _, _ in _VALUE_FLAGS), "drop_duplicates", "exclude_contaminated",
                                "preset", "preset_any_model"))
    written = write_view(arguments.dataset, view=arguments.view, **options, **storage_options(arguments))
    print(format_funnel(written.funnel))
    print(f"view written to {written.path}")
    return 0
