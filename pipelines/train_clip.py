"""Train a small open_clip model on a dataset view with mmdata.stream, checkpointing the loader state
with the model so that ``--resume`` continues mid-epoch with exactly the samples not yet seen.

    python pipelines/train_clip.py DATA --view clean --steps 200 --batch-size 32 --workers 2 \\
        --checkpoint runs/clip.pt [--resume] [--log runs/steps.jsonl]

The model is mmdata's tiny CLIP config (64 px, 2-layer towers) unless ``--model`` names an open_clip
model or config JSON; weights start from a seeded random init. The loop is ``mmdata.training.train_clip``,
the one the demo trains its filter network with: fixed steps, seeds and threads give the same weights
however busy the machine is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="dataset folder or http(s) URL")
    parser.add_argument("--view", default=None, help="view name (default: every stored sample)")
    parser.add_argument("--model", default=None, help="open_clip model name or config JSON (default: tiny config)")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps in total")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads: fixed, as they decide the result")
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (model, optimizer, loader state)")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    parser.add_argument("--stop-after", type=int, default=None, help="checkpoint and exit after this step (tests)")
    parser.add_argument("--log", default=None, help="append one JSON line per step (step, epoch, loss, keys)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 2 or args.checkpoint_every < 1 or args.threads < 1:
        parser.error("--steps, --checkpoint-every and --threads must be positive, --batch-size at least 2")
    return args


def build_model(model: str | None):
    from mmdata.score.model import load_clip, tiny_model_config, write_model_config

    if model is None:
        model = str(write_model_config(Path(tempfile.mkdtemp()) / "mmdata-tiny-clip.json", tiny_model_config()))
    return load_clip(model, None, device="cpu")


def train(args: argparse.Namespace) -> dict:
    import mmdata
    from mmdata.training import StepReport, TrainConfig, train_clip

    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                         num_workers=args.workers, threads=args.threads, checkpoint=args.checkpoint,
                         checkpoint_every=args.checkpoint_every, resume=args.resume)
    clip = build_model(args.model)
    dataset = mmdata.stream(args.data, view=args.view, seed=args.seed, image_transform=clip.preprocess)
    with contextlib.ExitStack() as scope:
        log = scope.enter_context(open(args.log, "a")) if args.log else None

        def on_step(report: StepReport) -> bool:
            if log:
                log.write(json.dumps({"step": report.step, "epoch": report.epoch, "loss": report.loss,
                                      "keys": report.keys}) + "\n")
                log.flush()
            return report.step == args.stop_after

        result = train_clip(clip.model, dataset, clip.tokenizer, config, on_step=on_step)
    return {"step": result.steps, "epoch": result.epoch, "loss": result.losses[-1] if result.losses else None}


if __name__ == "__main__":
    print(json.dumps(train(parse_args())))
