"""One contrastive training loop for open_clip models over an ``mmdata.stream`` dataset, shared by the
demo's filter network and ``pipelines/train_clip.py``.

It runs a fixed number of optimizer steps from fixed seeds (torch, numpy, python and the DataLoader's
worker seeds), with a fixed intra-op thread count, so the same steps give bitwise the same weights
however busy the machine is. A time cap (``max_seconds``) may stop it early: that is warned about
loudly and recorded, since the weights then depend on the machine's speed.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from mmdata.atomic import atomic_file
from mmdata.stream.collate import clip_collate
from mmdata.stream.dataset import StreamingDataset


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``threads`` is part of the result: float reductions sum in an order set by the
    thread count, so it is fixed rather than taken from the machine."""

    steps: int
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 0  # linear learning-rate warm-up over the first steps
    seed: int = 0
    num_workers: int = 1
    threads: int = 1
    max_seconds: float | None = None  # time cap: stops before ``steps``, with a warning
    checkpoint: str | None = None  # resumable state (model, optimizer, loader, step), written at the end
    checkpoint_every: int = 0  # also every this many steps (0: only at the end)
    resume: bool = False  # continue from ``checkpoint`` if it exists

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 2 or self.threads < 1:
            raise ValueError("steps and threads must be at least 1, batch_size at least 2 (a contrastive loss "
                             "needs a negative in each batch)")
        if self.warmup_steps < 0 or self.num_workers < 0 or self.checkpoint_every < 0 or self.seed < 0:
            raise ValueError("warmup_steps, num_workers, checkpoint_every and seed must be non-negative")
        if self.max_seconds is not None and self.max_seconds < 0:
            raise ValueError("max_seconds must be non-negative, or None for no time cap")
        if (self.resume or self.checkpoint_every) and not self.checkpoint:
            raise ValueError("resume and checkpoint_every need a checkpoint path")


@dataclass(frozen=True)
class StepReport:
    """What ``on_step`` sees after each optimizer step."""

    step: int
    epoch: int
    loss: float
    keys: list[str]


@dataclass
class TrainResult:
    steps: int  # optimizer steps in all, those of a resumed checkpoint included
    epoch: int  # the epoch of the last step
    samples_per_epoch: int
    seconds: float  # wall time of this call
    stopped_early: bool  # the time cap ended training before ``config.steps``
    skipped_batches: int  # batches of one sample (no negative for the contrastive loss)
    losses: list[float] = field(default_factory=list)  # one per step of this call

    def summary(self) -> dict:
        """The figures worth keeping next to the weights (``train.json``)."""
        return {"steps": self.steps, "epochs": self.epoch + 1, "samples_per_epoch": self.samples_per_epoch,
                "seconds": round(self.seconds, 1), "stopped_early": self.stopped_early,
                "skipped_batches": self.skipped_batches,
                "first_loss": self.losses[0] if self.losses else None,
                "last_loss": float(np.mean(self.losses[-5:])) if self.losses else None}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; call it before building the model to fix its initial weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_clip(model: torch.nn.Module, dataset: StreamingDataset, tokenizer: Callable, config: TrainConfig, *,
               on_step: Callable[[StepReport], bool | None] | None = None) -> TrainResult:
    """Train ``model`` (an open_clip CLIP, in place) with ``ClipLoss`` and AdamW for ``config.steps`` steps.

    ``dataset`` fixes the data order by its own seed (pass it ``config.seed``); its ``image_transform``
    should be the model's preprocess. ``on_step`` may return True to stop after that step (the
    checkpoint is written then too).
    """
    from open_clip.loss import ClipLoss

    if max(dataset.worker_sizes(config.num_workers)) < 2:
        raise ValueError(f"no DataLoader worker gets 2 of the dataset's {len(dataset)} samples, and a contrastive "
                         f"batch needs 2: use fewer than {config.num_workers} workers or a larger dataset")
    loader = dataset.loader(batch_size=config.batch_size, num_workers=config.num_workers,
                            collate_fn=clip_collate(tokenizer), generator=torch.Generator())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = ClipLoss()
    device = next(model.parameters()).device
    step, epoch = 0, 0
    with _deterministic_torch(config.threads):
        if config.resume and Path(config.checkpoint).exists():
            step, epoch = load_checkpoint(config.checkpoint, model, optimizer, loader)
        else:
            seed_everything(config.seed)
        model.train()
        started, losses, skipped = time.perf_counter(), [], 0
        stop, stopped_early = step >= config.steps, False
        while not stop:
            loader.set_epoch(epoch)  # the epoch of a loaded state keeps its progress
            # Worker seeds (random crops) come from this generator: fixed per epoch, not by process history.
            loader.generator.manual_seed(_epoch_seed(config.seed, epoch))
            for batch in loader:
                if len(batch["key"]) < 2:
                    skipped += 1
                    continue
                for group in optimizer.param_groups:
                    group["lr"] = config.learning_rate * min(1.0, (step + 1) / max(1, config.warmup_steps))
                image_features, text_features, logit_scale = model(batch["image"].to(device),
                                                                   batch["text"].to(device))[:3]
                loss = loss_fn(image_features, text_features, logit_scale)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                losses.append(loss.item())
                stop = bool(on_step and on_step(StepReport(step, epoch, losses[-1], batch["key"])))
                over_time = config.max_seconds is not None and time.perf_counter() - started >= config.max_seconds
                stopped_early = over_time and step < config.steps and not stop
                if stop or stopped_early or step >= config.steps:
                    stop = True
                    break
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    save_checkpoint(config.checkpoint, model, optimizer, loader, step, epoch)
            else:
                epoch += 1
        if config.checkpoint:
            save_checkpoint(config.checkpoint, model, optimizer, loader, step, epoch)
    result = TrainResult(steps=step, epoch=epoch, samples_per_epoch=len(dataset),
                         seconds=time.perf_counter() - started, stopped_early=stopped_early,
                         skipped_batches=skipped, losses=losses)
    if stopped_early:
        _warn_stopped_early(result, config)
    return result


def save_checkpoint(path: str, model, optimizer, loader, step: int, epoch: int) -> None:
    """Model, optimizer, loader position and torch RNG: what :func:`load_checkpoint` resumes exactly."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "loader": loader.state_dict(),
             "step": step, "epoch": epoch, "torch_rng": torch.get_rng_state()}
    with atomic_file(path) as handle:
        torch.save(state, handle)


def load_checkpoint(path: str, model, optimizer, loader) -> tuple[int, int]:
    """Restore a :func:`save_checkpoint` state in place; returns ``(step, epoch)``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    loader.load_state_dict(state["loader"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), int(state["epoch"])


@contextlib.contextmanager
def _deterministic_torch(threads: int) -> Iterator[None]:
    """A fixed intra-op thread count and deterministic kernels while training; the caller's settings after."""
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1], warn_only=previous[2])


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def _warn_stopped_early(result: TrainResult, config: TrainConfig) -> None:
    message = (f"training stopped early: its time cap of {config.max_seconds} s ended it after {result.steps} of "
               f"{config.steps} steps, so its weights depend on how fast and busy this machine is; raise the cap "
               f"(or drop it) for a reproducible result")
    print(f"WARNING: {message}", file=sys.stderr, flush=True)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
