"""Train a small open_clip model on a dataset view with mmdata.stream, checkpointing the loader state
with the model so that ``--resume`` continues mid-epoch with exactly the samples not yet seen.

    python pipelines/train_clip.py DATA --view clean --steps 200 --batch-size 32 --workers 2 \\
        --checkpoint runs/clip.pt [--resume] [--log runs/steps.jsonl]

The model is mmdata's tiny CLIP config (64 px, 2-layer towers) unless ``--model`` names an open_clip
model or config JSON; weights start from a seeded random init.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (model, optimizer, loader state)")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    parser.add_argument("--stop-after", type=int, default=None, help="checkpoint and exit after this step (tests)")
    parser.add_argument("--log", default=None, help="append one JSON line per step (step, epoch, loss, keys)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.checkpoint_every < 1:
        parser.error("--steps, --batch-size and --checkpoint-every must be positive")
    return args


def build_model(model: str | None):
    from mmdata.score.model import load_clip, tiny_model_config, write_model_config

    if model is None:
        model = str(write_model_config(Path(tempfile.mkdtemp()) / "mmdata-tiny-clip.json", tiny_model_config()))
    return load_clip(model, None, device="cpu")


def save_checkpoint(path: str, model, optimizer, loader, step: int, epoch: int) -> None:
    import torch

    from mmdata.atomic import atomic_file

    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "loader": loader.state_dict(),
        "step": step,
        "epoch": epoch,
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_file(path) as handle:
        torch.save(state, handle)


def train(args: argparse.Namespace) -> dict:
    import open_clip
    import torch

    import mmdata
    from mmdata.stream.collate import clip_collate

    torch.manual_seed(args.seed)
    clip = build_model(args.model)
    model = clip.model.train()
    dataset = mmdata.stream(args.data, view=args.view, seed=args.seed, image_transform=clip.preprocess)
    loader = dataset.loader(batch_size=args.batch_size, num_workers=args.workers, collate_fn=clip_collate(clip.tokenizer))
    if len(loader) == 0:
        raise ValueError(f"{args.data} (view {args.view}) holds no samples to train on")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    loss_fn = open_clip.ClipLoss()
    step, epoch = 0, 0
    if args.resume and Path(args.checkpoint).exists():
        state = torch.load(args.checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["torch_rng"])
        step, epoch = state["step"], state["epoch"]
    log = open(args.log, "a") if args.log else None
    loss_value = float("nan")
    try:
        while step < args.steps:
            loader.set_epoch(epoch)  # the epoch of a loaded state keeps its progress
            for batch in loader:
                image_features, text_features, logit_scale = model(batch["image"], batch["text"])
                loss = loss_fn(image_features, text_features, logit_scale)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_value = loss.item()
                if log:
                    log.write(json.dumps({"step": step, "epoch": epoch, "loss": loss_value, "keys": batch["key"]}) + "\n")
                    log.flush()
                stopping = step == args.stop_after
                if step % args.checkpoint_every == 0 or stopping or step == args.steps:
                    save_checkpoint(args.checkpoint, model, optimizer, loader, step, epoch)
                if stopping or step == args.steps:
                    return {"step": step, "epoch": epoch, "loss": loss_value}
            epoch += 1
    finally:
        if log:
            log.close()
    return {"step": step, "epoch": epoch, "loss": loss_value}


if __name__ == "__main__":
    print(json.dumps(train(parse_args())))
