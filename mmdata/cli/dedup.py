"""``mmdata dedup DIR [--exact] [--near --hamming H] [--semantic --eps E --clusters K]``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dedup",
        help="mark exact, near and semantic duplicates (DIR/annotations/dedup.parquet)",
        description="Mark duplicates: each group keeps the sample with the highest clip_score; the others get "
        "duplicate_of (the kept sample), dup_reason and dup_similarity. With no tier flag, only --exact runs.",
    )
    parser.add_argument("dataset", help="dataset folder")
    parser.add_argument("--exact", action="store_true", help="identical image bytes or decoded pixels")
    parser.add_argument("--near", action="store_true", help="perceptual hash within --hamming bits (re-encodes, resizes, crops)")
    parser.add_argument("--hamming", type=int, default=8, help="near tier: largest Hamming distance of 64 bits (default 8)")
    parser.add_argument(
        "--colour-tolerance", type=float, default=24.0,
        help="near tier: largest difference of the RGB channel means/standard deviations, 0-255 (default 24)",
    )
    parser.add_argument(
        "--thumbnail-tolerance", type=float,
        help="near tier: largest colour difference (0-255) of the verifying 16x16 content thumbnails (default 64)",
    )
    parser.add_argument("--semantic", action="store_true", help="SemDeDup on the CLIP image embeddings (needs `mmdata score`)")
    parser.add_argument(
        "--eps", type=float, default=0.05,
        help="semantic tier: cosine DISTANCE; pairs with cosine similarity > 1 - eps are duplicates, so a larger "
        "eps removes more (default 0.05)",
    )
    parser.add_argument("--clusters", type=int, help="semantic tier: k-means clusters (default: one per ~1,000 samples)")
    parser.add_argument("--model", help="score model id whose embeddings and clip_score to use (default: the default model)")
    parser.add_argument("--processes", type=int, help="parallel workers (1: no Ray)")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.curate.dedup import dedup

    exact = arguments.exact or not (arguments.near or arguments.semantic)
    result = dedup(
        arguments.dataset,
        exact=exact,
        near=arguments.near,
        hamming=arguments.hamming,
        colour_tolerance=arguments.colour_tolerance,
        semantic=arguments.semantic,
        eps=arguments.eps,
        clusters=arguments.clusters,
        model=arguments.model,
        processes=arguments.processes,
        **({"thumbnail_tolerance": arguments.thumbnail_tolerance} if arguments.thumbnail_tolerance is not None else {}),
    )
    for name, value in result.counts.items():
        label = f"duplicates ({name})" if name in ("exact", "near", "semantic") else name
        print(f"{label:<24}{value:>12,}")
    print(f"written to {result.path}")
    return 0
