"""``mmdata reshard DIR --view NAME --output DIR2``: materialise a view as a new dataset."""

from __future__ import annotations

import argparse

from mmdata.cli._defaults import defaults_from
from mmdata.cli._flags import add_execution_flags, add_storage_flag, execution_options, given, storage_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reshard",
        help="write a view's samples as a new dataset with evenly sized shards",
        description="Copy the samples of DIR/views/NAME.parquet (members, metadata, scores and embeddings) into a new "
        "dataset in the same layout under new keys (source_key keeps the old one). Re-running resumes.",
        formatter_class=defaults_from("mmdata.curate.reshard:ReshardConfig"),
    )
    parser.add_argument("dataset", help="source dataset folder or URL (s3://bucket/ds)")
    parser.add_argument("--view", required=True, help="view to materialise (made with `mmdata filter`)")
    parser.add_argument("--output", "-o", required=True, help="new dataset folder or URL")
    parser.add_argument("--shard-size", type=int, help="samples per output shard (default %(library_default)s)")
    add_execution_flags(parser)
    add_storage_flag(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.curate.reshard import reshard

    manifest = reshard(arguments.dataset, view=arguments.view, output=arguments.output,
                       **given(arguments, ("shard_size",)), **execution_options(arguments),
                       **storage_options(arguments))
    print(f"{manifest['samples']:,} samples in {len(manifest['shards'])} shards written to {arguments.output}")
    return 0
