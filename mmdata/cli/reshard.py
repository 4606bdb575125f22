"""``mmdata reshard DIR --view NAME --output DIR2``: materialise a view as a new dataset."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reshard",
        help="write a view's samples as a new dataset with evenly sized shards",
        description="Copy the samples of DIR/views/NAME.parquet (members, metadata, scores and embeddings) into a new "
        "dataset in the same layout under new keys (source_key keeps the old one). Re-running resumes.",
    )
    parser.add_argument("dataset", help="source dataset folder")
    parser.add_argument("--view", required=True, help="view to materialise (made with `mmdata filter`)")
    parser.add_argument("--output", "-o", required=True, help="new dataset folder")
    parser.add_argument("--shard-size", type=int, default=10_000, help="samples per output shard (default 10000)")
    parser.add_argument("--processes", type=int, help="concurrent shards (1: no Ray)")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.curate.reshard import reshard

    manifest = reshard(
        arguments.dataset, view=arguments.view, output=arguments.output, shard_size=arguments.shard_size, processes=arguments.processes
    )
    print(f"{manifest['samples']:,} samples in {len(manifest['shards'])} shards written to {arguments.output}")
    return 0
