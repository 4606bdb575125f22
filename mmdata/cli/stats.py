"""``mmdata stats DIR``: the download summary of a dataset folder, from its shards' stats files."""

from __future__ import annotations

import argparse

from mmdata.cli._flags import add_storage_flag, storage_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("stats", help="summarise a downloaded dataset folder by status and error class")
    parser.add_argument("folder", help="dataset folder or URL (holding NNNNN_stats.json files)")
    add_storage_flag(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.download.summary import summarize_folder

    print(summarize_folder(arguments.folder, **storage_options(arguments)))
    return 0
