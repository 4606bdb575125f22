"""``mmdata dedup DIR [--exact] [--near --hamming H [--near-recall R]]
[--semantic --eps E --clusters K [--force-semantic]] [--block-rows N] [--scratch-dir DIR]``."""

from __future__ import annotations

import argparse
import warnings

from mmdata.cli._defaults import defaults_from
from mmdata.cli._flags import add_execution_flags, add_storage_flag, execution_options, given, storage_options

TIERS = ("exact", "near", "semantic")
_OPTIONS = (
    "hamming", "near_recall", "colour_tolerance", "thumbnail_tolerance", "mirrors", "eps", "clusters",
    "force_semantic", "model", "block_rows", "scratch_dir",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dedup",
        help="mark exact, near and semantic duplicates (DIR/annotations/dedup.parquet)",
        description="Mark duplicates: each group keeps the sample with the highest clip_score; the others get "
        "duplicate_of (the kept sample), dup_reason and dup_similarity. With no tier flag, only --exact runs.",
        formatter_class=defaults_from("mmdata.curate.dedup:DedupConfig"),
    )
    parser.add_argument("dataset", help="dataset folder or URL (s3://bucket/ds)")
    parser.add_argument("--exact", action="store_true", default=None, help="identical image bytes or decoded pixels")
    parser.add_argument("--near", action="store_true", default=None,
                        help="perceptual hash within --hamming bits (re-encodes, resizes, crops)")
    parser.add_argument("--hamming", type=int,
                        help="near tier: largest Hamming distance of 64 bits (default %(library_default)s)")
    parser.add_argument(
        "--near-recall", type=float,
        help="near tier: 1.0 searches exactly (time quadratic in the rows); below 1 (e.g. 0.95), a faster "
        "approximate search finds each pair within --hamming with at least this probability (closer pairs more "
        "often) and never adds a pair (default %(library_default)s)",
    )
    parser.add_argument(
        "--colour-tolerance", type=float,
        help="near tier: largest difference of the RGB channel means/standard deviations, 0-255 "
        "(default %(library_default)s)",
    )
    parser.add_argument(
        "--thumbnail-tolerance", type=float,
        help="near tier: largest colour difference (0-255) of the verifying 16x16 content thumbnails, after a "
        "uniform brightness shift (default %(library_default)s)",
    )
    parser.add_argument(
        "--mirrors", action=argparse.BooleanOptionalAction, default=None,
        help="near tier: a picture flipped left to right is a duplicate (default %(library_default)s)",
    )
    parser.add_argument("--semantic", action="store_true", default=None,
                        help="SemDeDup on the CLIP image embeddings (needs `mmdata score`); refused where the "
                        "embeddings do not separate copies from neighbours at --eps (see the summary)")
    parser.add_argument(
        "--eps", type=float,
        help="semantic tier: cosine DISTANCE; pairs with cosine similarity > 1 - eps are duplicates, so a larger "
        "eps removes more (default %(library_default)s)",
    )
    parser.add_argument("--clusters", type=int,
                        help="semantic tier: k-means clusters (default: one per ~1,000 samples)")
    parser.add_argument("--force-semantic", action="store_true", default=None,
                        help="semantic tier: mark duplicates even where its check refuses")
    parser.add_argument("--model",
                        help="score model id whose embeddings and clip_score to use (default: the default model)")
    parser.add_argument("--block-rows", type=int,
                        help="rows whose hashes are held in memory at once (exact-tier partitions, near-tier query "
                        "blocks; the near tier's index holds 32x as many pHashes); smaller: less memory, more passes "
                        "(default %(library_default)s)")
    parser.add_argument("--scratch-dir",
                        help="local folder for the spilled hashes and embeddings (default: the system's temp folder)")
    add_execution_flags(parser)
    add_storage_flag(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.curate.dedup import dedup

    with warnings.catch_warnings():  # the summary below prints the semantic check's verdict
        warnings.filterwarnings("ignore", message="semantic dedup", category=RuntimeWarning)
        result = dedup(arguments.dataset, **_tier_options(arguments), **given(arguments, _OPTIONS),
                       **execution_options(arguments), **storage_options(arguments))
    for name, value in result.counts.items():
        label = f"duplicates ({name})" if name in TIERS else name
        print(f"{label:<24}{value:>12,}")
    check = getattr(result, "semantic_check", None)  # None: the semantic tier was off
    if check is not None:
        print(check.summary())
    print(f"written to {result.path}")
    return 0


def _tier_options(arguments: argparse.Namespace) -> dict:
    """The tiers the flags name, the others off; none named: the library's default tiers."""
    named = given(arguments, TIERS)
    return {tier: named.get(tier, False) for tier in TIERS} if named else {}
