"""``mmdata index DIR``: build the vector index of a dataset's stored CLIP embeddings."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="build the vector index over stored CLIP embeddings",
        description="Build (or keep, when current) a faiss index of DIR's stored embeddings under DIR/index/. "
        "Exact for small sets; HNSW or compressed IVF-PQ for large ones, chosen from the size and --max-index-memory.",
    )
    parser.add_argument("dataset", metavar="DIR")
    parser.add_argument("--kind", choices=("image", "text"), default="image", help="which embeddings to index (default image)")
    parser.add_argument("--model", default=None, help="scored model id under DIR/scores/ (default: the default model)")
    parser.add_argument("--max-index-memory", default=None, metavar="SIZE", help="RAM the index may take, e.g. 2GB (default 4GB)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the embeddings did not change")
    parser.set_defaults(handler=_run)


def _run(arguments: argparse.Namespace) -> int:
    from mmdata.search.index import build_index

    info = build_index(
        arguments.dataset,
        kind=arguments.kind,
        model=arguments.model,
        max_index_memory=arguments.max_index_memory,
        force=arguments.force,
    )
    report = info.report
    state = "built" if info.rebuilt else "up to date"
    recall = "" if report["tuned_recall"] is None else f", tuned recall@10 {report['tuned_recall']:.3f}"
    print(
        f"{state}: {info.count} {info.kind} vectors of {info.model_id} -> {info.version_dir} "
        f"({report['plan']['factory']}, {report['index_bytes'] / 1e6:.1f} MB, {report['build_seconds']:.1f} s"
        f"{recall}, search {report['search_params'] or 'exact'})"
    )
    return 0
