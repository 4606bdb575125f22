"""``mmdata decontaminate DIR --against EVAL``: mark samples matching evaluation images."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "decontaminate",
        help="mark samples that match evaluation images (DIR/annotations/contamination.parquet)",
        description="Mark samples that are exact, near (perceptual hash) or embedding-level matches of any image of "
        "EVAL, a folder of images or another mmdata dataset.",
    )
    parser.add_argument("dataset", help="dataset folder")
    parser.add_argument("--against", required=True, help="folder of evaluation images, or an mmdata dataset")
    parser.add_argument("--hamming", type=int, default=8, help="near tier: largest Hamming distance of 64 bits (default 8)")
    parser.add_argument("--eps", type=float, default=0.05, help="embedding tier: cosine DISTANCE; larger flags more (default 0.05)")
    embedding = parser.add_mutually_exclusive_group()
    embedding.add_argument("--embedding", dest="embedding", action="store_true", default=None, help="require the embedding tier")
    embedding.add_argument("--no-embedding", dest="embedding", action="store_false", help="skip the embedding tier")
    parser.add_argument("--model", help="score run (model id under DIR/scores/) whose embeddings to compare")
    parser.add_argument("--pretrained", help="the score run's checkpoint, if its recorded path is gone")
    parser.add_argument("--device", default="cpu", help="cpu|cuda|auto for encoding evaluation images")
    parser.add_argument("--processes", type=int, help="parallel workers for hashing (1: no Ray)")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.curate.decontaminate import decontaminate

    result = decontaminate(
        arguments.dataset,
        against=arguments.against,
        model=arguments.model,
        hamming=arguments.hamming,
        eps=arguments.eps,
        embedding=arguments.embedding,
        pretrained=arguments.pretrained,
        device=arguments.device,
        processes=arguments.processes,
    )
    for name, value in result.counts.items():
        print(f"{name:<24}{value:>12,}")
    print(f"written to {result.path}")
    return 0
