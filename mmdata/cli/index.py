"""``mmdata index DIR``: build the vector index of a dataset's stored CLIP embeddings."""

from __future__ import annotations

import argparse

from mmdata.cli._defaults import defaults_from
from mmdata.cli._flags import add_execution_flags, add_storage_flag, execution_options, given, storage_options

_OPTIONS = ("kind", "model", "max_index_memory", "batch_size", "force")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="build the vector index over stored CLIP embeddings",
        description="Build (or keep, when current) a faiss index of DIR's stored embeddings under DIR/index/. "
        "Exact for small sets; HNSW or compressed IVF-PQ for large ones, chosen from the size and --max-index-memory. "
        "Each shard's embeddings are read as one task.",
        formatter_class=defaults_from("mmdata.search.ann:IndexConfig", "mmdata.search.index:build_index"),
    )
    parser.add_argument("dataset", metavar="DIR", help="dataset folder or URL (s3://bucket/ds)")
    parser.add_argument("--kind", choices=("image", "text"),
                        help="which embeddings to index (default %(library_default)s)")
    parser.add_argument("--model", help="scored model id under DIR/scores/ (default: the default model)")
    parser.add_argument("--max-index-memory", metavar="SIZE",
                        help="RAM the index may take, e.g. 2GB (default %(library_default)s bytes, or the committed "
                        "index's)")
    parser.add_argument("--batch-size", type=int,
                        help="vectors added to the index at a time; smaller takes less memory "
                        "(default %(library_default)s)")
    parser.add_argument("--force", action="store_true", default=None,
                        help="rebuild even when the embeddings did not change")
    add_storage_flag(parser)
    add_execution_flags(parser)
    parser.set_defaults(handler=_run)


def _run(arguments: argparse.Namespace) -> int:
    from mmdata.search.index import build_index

    info = build_index(arguments.dataset, **given(arguments, _OPTIONS), **storage_options(arguments),
                       **execution_options(arguments))
    report = info.report
    state = "built" if info.rebuilt else "up to date"
    recall = "" if report["tuned_recall"] is None else f", tuned recall@10 {report['tuned_recall']:.3f}"
    print(
        f"{state}: {info.count} {info.kind} vectors of {info.model_id} -> {info.version_dir} "
        f"({report['plan']['factory']}, {report['index_bytes'] / 1e6:.1f} MB, {report['build_seconds']:.1f} s"
        f"{recall}, search {report['search_params'] or 'exact'})"
    )
    return 0
