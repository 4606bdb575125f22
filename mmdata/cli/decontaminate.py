"""``mmdata decontaminate DIR --against EVAL``: mark samples matching evaluation images."""

from __future__ import annotations

import argparse

from mmdata.cli._defaults import defaults_from
from mmdata.cli._flags import add_execution_flags, add_storage_flag, execution_options, given, storage_options
from mmdata.score.model import DEVICES

_OPTIONS = ("hamming", "colour_tolerance", "eps", "embedding", "model", "pretrained", "device", "batch_size")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "decontaminate",
        help="mark samples that match evaluation images (DIR/annotations/contamination.parquet)",
        description="Mark samples that are exact, near (perceptual hash) or embedding-level matches of any image of "
        "EVAL, a folder of images or another mmdata dataset.",
        formatter_class=defaults_from("mmdata.curate.decontaminate:DecontaminateConfig"),
    )
    parser.add_argument("dataset", help="dataset folder or URL (s3://bucket/ds)")
    parser.add_argument("--against", required=True,
                        help="folder of evaluation images, or an mmdata dataset (either may be a URL)")
    parser.add_argument("--hamming", type=int,
                        help="near tier: largest Hamming distance of 64 bits (default %(library_default)s)")
    parser.add_argument("--colour-tolerance", type=float,
                        help="near tier: largest difference of the RGB channel means/standard deviations, 0-255 "
                        "(default %(library_default)s)")
    parser.add_argument("--eps", type=float,
                        help="embedding tier: cosine DISTANCE; larger flags more (default %(library_default)s)")
    embedding = parser.add_mutually_exclusive_group()
    embedding.add_argument("--embedding", dest="embedding", action="store_true", default=None,
                           help="require the embedding tier (default: run it when DIR has image embeddings)")
    embedding.add_argument("--no-embedding", dest="embedding", action="store_false", help="skip the embedding tier")
    parser.add_argument("--model", help="score run (model id under DIR/scores/) whose embeddings to compare")
    parser.add_argument("--pretrained", help="the score run's checkpoint, if its recorded path is gone")
    parser.add_argument("--device", choices=DEVICES,
                        help="where to encode the evaluation images (default %(library_default)s)")
    parser.add_argument("--batch-size", type=int,
                        help="embedding tier: samples compared at a time; smaller takes less memory "
                        "(default %(library_default)s)")
    add_execution_flags(parser)
    add_storage_flag(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.curate.decontaminate import decontaminate

    result = decontaminate(arguments.dataset, against=arguments.against, **given(arguments, _OPTIONS),
                           **execution_options(arguments), **storage_options(arguments))
    for name, value in result.counts.items():
        print(f"{name:<24}{value:>12,}")
    print(f"written to {result.path}")
    return 0
