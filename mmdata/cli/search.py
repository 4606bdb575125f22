"""``mmdata search DIR (--text T | --image FILE | --key KEY)``: the nearest samples by CLIP similarity."""

from __future__ import annotations

import argparse

from mmdata.cli._defaults import defaults_from
from mmdata.cli._flags import add_storage_flag, given, storage_options

_OPTIONS = ("text", "image", "key", "k", "view", "kind", "model", "pretrained")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="find samples by text, image or key over the stored CLIP embeddings",
        description="Search DIR's stored embeddings with a query encoded by the same model that made them. "
        "Text and image queries search images (use --kind text to search captions); a key searches its neighbours.",
        formatter_class=defaults_from("mmdata.search.query:search"),
    )
    parser.add_argument("dataset", metavar="DIR", help="dataset folder or URL (s3://bucket/ds)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a caption-like query")
    query.add_argument("--image", metavar="FILE", help="an image file")
    query.add_argument("--key", help="a stored sample's key: its nearest neighbours")
    parser.add_argument("-k", type=int, help="number of hits (default %(library_default)s)")
    parser.add_argument("--view", metavar="NAME", help="only samples of DIR/views/NAME.parquet")
    parser.add_argument("--kind", choices=("image", "text"), help="embeddings to search (default image)")
    parser.add_argument("--model",
                        help="scored model id, or the model the query must match (default: the default model)")
    parser.add_argument("--pretrained", help="the stored checkpoint's file, if it moved")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained grid of the hits (a path or URL)")
    add_storage_flag(parser)
    parser.set_defaults(handler=_run)


def _run(arguments: argparse.Namespace) -> int:
    from mmdata.search.query import search

    hits = search(arguments.dataset, **given(arguments, _OPTIONS), **storage_options(arguments))
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:3d}  {hit.similarity:.4f}  {hit.key}  shard {hit.shard}  {hit.caption or ''}")
    if arguments.html:
        from mmdata.search.html import write_hits_html

        query = arguments.text or arguments.image or f"key {arguments.key}"
        path = write_hits_html(arguments.dataset, hits, arguments.html, title=f"mmdata search: {query}",
                               **storage_options(arguments))
        print(f"wrote {path}")
    return 0
