"""``mmdata filter DIR --view NAME [rules]``: select samples by AND-ed rules into DIR/views/NAME.parquet."""

from __future__ import annotations

import argparse

from mmdata.cli._flags import add_storage_flag, given, storage_options

_VALUE_FLAGS = (
    ("--min-clip-score", "min_clip_score", float, "keep samples whose clip_score is at least this"),
    ("--top-fraction", "top_fraction", float, "keep the best F (0-1] of the scored samples (global quantile)"),
    ("--score-model", "score_model", str, "model id of the clip_score to use when several models scored DIR"),
    ("--min-size", "min_size", int, "keep images whose shorter side has at least this many pixels"),
    ("--max-aspect-ratio", "max_aspect_ratio", float, "keep images whose longer/shorter side ratio is at most this"),
    ("--min-caption-words", "min_caption_words", int, "keep captions with at least this many words"),
    ("--max-caption-words", "max_caption_words", int, "keep captions with at most this many words"),
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
    for flag, name, value_type, text in _VALUE_FLAGS:
        parser.add_argument(flag, dest=name, type=value_type, help=text)
    parser.add_argument("--drop-duplicates", action="store_true", default=None,
                        help="drop samples that `mmdata dedup` marked")
    parser.add_argument("--exclude-contaminated", action="store_true", default=None,
                        help="drop samples that `mmdata decontaminate` marked")
    add_storage_flag(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.curate.view import filter_view, format_funnel, view_funnel, view_path

    options = given(arguments, (*(name for _, name, _, _ in _VALUE_FLAGS), "drop_duplicates", "exclude_contaminated"))
    view = filter_view(arguments.dataset, view=arguments.view, **options, **storage_options(arguments))
    print(format_funnel(view_funnel(view)))
    print(f"view written to {view_path(arguments.dataset, arguments.view)}")
    return 0
