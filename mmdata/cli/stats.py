"""``mmdata stats DIR``: the download summary of a dataset folder, from its shards' stats files."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("stats", help="summarise a downloaded dataset folder by status and error class")
    parser.add_argument("folder", help="dataset folder (holding NNNNN_stats.json files)")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.download.summary import summarize_folder

    print(summarize_folder(arguments.folder))
    return 0
