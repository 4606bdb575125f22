"""``mmdata score DIR --model M --pretrained P``: CLIP-score every stored sample of a dataset."""

from __future__ import annotations

import argparse
import json
import sys

from mmdata.cli._defaults import defaults_from
from mmdata.cli._flags import add_execution_flags, add_storage_flag, execution_options, given, storage_options
from mmdata.score.model import DEVICES, PRECISIONS

_OPTIONS = ("pretrained", "batch_size", "device", "precision", "actors", "gpus_per_actor", "cpus_per_actor",
            "decode_workers", "no_embeddings", "default")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="CLIP-score every stored image-caption pair of a dataset",
        description="Embed every stored sample with an open_clip model on actors and write "
        "DIR/scores/<model_id>/<shard>.parquet (key, clip_score, score_error, embeddings). "
        "Re-running skips the shards already scored.",
        formatter_class=defaults_from("mmdata.score.config:ScoreConfig"),
    )
    parser.add_argument("dataset", metavar="DIR",
                        help="dataset folder or URL (s3://bucket/ds) written by mmdata download or img2dataset")
    parser.add_argument("--model", required=True, help="open_clip model name (ViT-B-32) or a model-config JSON path")
    parser.add_argument(
        "--pretrained",
        help="open_clip pretrained tag or hf-hub:org/name (need a network), or a local checkpoint "
        "(.pt/.pth state dict or training checkpoint, .safetensors); omit for random weights",
    )
    parser.add_argument("--batch-size", type=int, help="samples per forward pass (default %(library_default)s)")
    parser.add_argument("--device", choices=DEVICES,
                        help="auto: a GPU when an actor sees one (default %(library_default)s)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="fp16/bf16: autocast on GPU (default %(library_default)s)")
    parser.add_argument(
        "--actors", type=int, help="model replicas (default: 1 on CPU; on GPUs one per 4 CPUs, at most 4 per GPU)"
    )
    parser.add_argument("--gpus-per-actor", type=float, help="GPUs each actor asks for (fractions share one GPU)")
    parser.add_argument("--cpus-per-actor", type=float, help="CPUs per actor for decoding (default: shared out)")
    parser.add_argument("--decode-workers", type=int, help="decode threads per actor (default: its CPUs)")
    parser.add_argument("--no-embeddings", action="store_true", default=None,
                        help="keep only the scores, not the embeddings")
    parser.add_argument("--default", action="store_true", default=None,
                        help="make this model the one read_table shows as clip_score")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_storage_flag(parser)
    add_execution_flags(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.score.job import score

    options = given(arguments, _OPTIONS)
    if arguments.quiet:
        options["show_progress"] = False
    summary = score(dataset=arguments.dataset, model=arguments.model, **options, **storage_options(arguments),
                    **execution_options(arguments))
    counts = summary["counts"]
    print(
        f"{summary['model_id']}: {summary['shards'] - summary['shards_skipped']} shard(s) scored, "
        f"{summary['shards_skipped']} already done; {counts.get('scored', 0)} samples scored, "
        f"{counts.get('samples', 0) - counts.get('scored', 0)} failed "
        f"({', '.join(f'{name}={value}' for name, value in counts.items() if name.startswith('failed_')) or 'none'}); "
        f"{summary['samples_per_second']:.1f} samples/s -> {summary['output_dir']}"
    )
    for failure in summary["failures"]:
        print(f"shard failed (re-run to retry): {failure}", file=sys.stderr)
    if summary["failures"]:
        print(json.dumps({"shards_failed": len(summary["failures"])}), file=sys.stderr)
        return 1
    return 0
