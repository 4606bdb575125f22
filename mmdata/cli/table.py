"""``mmdata table DIR -o FILE.parquet``: the dataset's joined table (metadata, scores, annotations)."""

from __future__ import annotations

import argparse

from mmdata.cli._flags import add_storage_flag, storage_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "table",
        help="write one parquet joining metadata, CLIP scores and annotations",
        description="One row per input row: download metadata, shard, clip_score (default model), "
        "clip_score__<model_id> per scored model and every annotation column.",
    )
    parser.add_argument("dataset", metavar="DIR", help="dataset folder or URL (s3://bucket/ds)")
    parser.add_argument("--output", "-o", required=True, help="parquet file (a path or URL) to write")
    parser.add_argument("--columns", help="comma-separated columns to keep (default all)")
    add_storage_flag(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.table import write_table

    columns = [name for name in arguments.columns.split(",") if name] if arguments.columns else None
    written = write_table(arguments.dataset, arguments.output, columns=columns, **storage_options(arguments))
    print(f"{written.rows} rows, {len(written.columns)} columns -> {arguments.output}")
    return 0
