"""Load an open_clip model from a name or a config JSON and from a tag, hub name or local checkpoint,
with a provenance record that says exactly which weights and preprocessing produced a score.

Checkpoints are read with ``torch.load(weights_only=True)`` or safetensors, never unpickled.
:func:`resolve_model` is cheap (no weights built) so a driver can name output folders; the model itself
is built by :func:`load_clip`, inside the worker that uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HF_HUB_PREFIX = "hf-hub:"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
PRECISIONS = ("fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class ModelLoadError(ValueError):
    """The model or its weights cannot be loaded; the message says what to do instead."""


@dataclass(frozen=True)
class ModelSpec:
    """What a (model, pretrained) pair names, resolved without building the model."""

    model: str  # as given: an open_clip name or a config JSON path
    open_clip_name: str  # the name open_clip knows it by (registered for config files)
    config: dict | None  # the model config (None for hf-hub models, read on load)
    config_sha256: str | None
    pretrained: str | None  # as given
    weights: str  # "random-init" | "tag" | "hf-hub" | "checkpoint"
    checkpoint_path: str | None
    checkpoint_sha256: str | None
    model_id: str


@dataclass
class LoadedClip:
    """An eval-mode CLIP model with its eval transform, tokenizer and provenance."""

    model: Any  # torch.nn.Module
    preprocess: Callable  # PIL image -> float tensor [3, H, W] (open_clip's eval transform)
    tokenizer: Callable  # list[str] -> int tensor [n, context_length]
    provenance: dict
    embed_dim: int
    model_id: str
    device: str
    precision: str

    def autocast(self):
        """Mixed precision for fp16/bf16 on GPU; weights stay fp32 so scores stay comparable."""
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)

    def encode_images(self, pixels) -> Any:
        """L2-normalised float32 image embeddings for a preprocessed batch [n, 3, H, W]."""
        import torch

        with torch.inference_mode(), self.autocast():
            features = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def encode_texts(self, tokens) -> Any:
        """L2-normalised float32 text embeddings for a token batch [n, context_length]."""
        import torch

        with torch.inference_mode(), self.autocast():
            features = self.model.encode_text(tokens.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(features.float(), dim=-1)


def resolve_model(model: str, pretrained: str | None = None) -> ModelSpec:
    """Name the model and weights (and hash a local checkpoint) without building anything."""
    import open_clip

    model = str(model)
    if pretrained is not None:
        pretrained = str(pretrained) or None
    config, config_sha256 = None, None
    if model.startswith(HF_HUB_PREFIX):
        open_clip_name, arch = model, model[len(HF_HUB_PREFIX):]
        if pretrained is not None:
            raise ModelLoadError(f"--model {model} already names its weights; drop --pretrained {pretrained}")
    elif model.endswith(".json") or os.path.isfile(model) or (
        os.sep in model and open_clip.get_model_config(model.replace("/", "-")) is None
    ):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(
                f"model config {model} does not exist (pass an open_clip model name or a config JSON)"
            )
        config = _read_config(path)
        config_sha256 = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        arch, model = path.stem, str(path.resolve())  # absolute: the record must not depend on the cwd
        open_clip_name = _register_config(f"{path.stem}__{config_sha256[:8]}", config)
    else:
        model = model.replace("/", "-")  # open_clip's own spelling: ViT-B/32 -> ViT-B-32
        config = open_clip.get_model_config(model)
        if config is None:
            raise ModelLoadError(
                f"unknown model {model!r}: not an open_clip model name nor a model-config JSON file "
                f"(names: open_clip.list_models(), e.g. ViT-B-32)"
            )
        open_clip_name, arch = model, model

    checkpoint_path = checkpoint_sha256 = None
    if model.startswith(HF_HUB_PREFIX):
        weights, weights_id = "hf-hub", "hf-hub"
    elif pretrained is None:
        # Random weights depend on the architecture alone: a config file's hash tells two apart.
        weights, weights_id = "random-init", "random-init" + (f"-{config_sha256[:8]}" if config_sha256 else "")
    elif pretrained.startswith(HF_HUB_PREFIX):
        weights, weights_id = "hf-hub", pretrained[len(HF_HUB_PREFIX):]
        open_clip_name = pretrained
    elif os.path.isfile(pretrained):
        checkpoint_path = pretrained = str(Path(pretrained).resolve())
        checkpoint_sha256 = file_sha256(checkpoint_path)
        weights, weights_id = "checkpoint", checkpoint_sha256[:8]
    elif _looks_like_path(pretrained):
        raise FileNotFoundError(f"checkpoint {pretrained} does not exist")
    else:
        tags = open_clip.list_pretrained_tags_by_model(open_clip_name)
        if pretrained not in tags:
            known = ", ".join(tags) or "none: pass a local checkpoint file instead"
            raise ModelLoadError(
                f"{pretrained!r} is not a checkpoint file nor a pretrained tag of {model} (tags: {known})"
            )
        weights, weights_id = "tag", pretrained
    model_id = _UNSAFE_ID_CHARS.sub("-", f"{arch}__{weights_id}").strip("-.")
    return ModelSpec(
        model=model,
        open_clip_name=open_clip_name,
        config=config,
        config_sha256=config_sha256,
        pretrained=pretrained,
        weights=weights,
        checkpoint_path=checkpoint_path,
        checkpoint_sha256=checkpoint_sha256,
        model_id=model_id,
    )


def load_clip(
    model: str | ModelSpec,
    pretrained: str | None = None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
) -> LoadedClip:
    """Build the model in eval mode on ``device`` (``auto``: cuda when this process sees one).

    Random init is seeded, so every worker that loads the same spec holds the same weights.
    """
    import open_clip
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"device must be one of {DEVICES} (or cuda:N), not {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        precision = "fp32"  # half precision on CPU is several times slower here, and no more exact
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("device cuda was asked for but this process sees no GPU (use --device cpu or auto)")
    spec = model if isinstance(model, ModelSpec) else resolve_model(model, pretrained)
    if spec.config_sha256 is not None:  # a spec made in another process: register its config here too
        _register_config(spec.open_clip_name, spec.config)

    tag = spec.pretrained if spec.weights == "tag" else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(
                spec.open_clip_name, pretrained=tag, device="cpu", weights_only=True
            )
        except RuntimeError as error:
            if spec.weights in ("tag", "hf-hub"):
                raise ModelLoadError(
                    f"could not fetch the weights of {spec.pretrained or spec.model}: this needs a network "
                    f"connection to the model hub ({error}). Offline, download the checkpoint elsewhere and "
                    f"pass its local file: --pretrained /path/to/open_clip_model.safetensors"
                ) from error
            raise
    if spec.checkpoint_path is not None:
        _load_checkpoint_into(clip, spec.checkpoint_path)
    clip = clip.to(device).eval()
    tokenizer = open_clip.get_tokenizer(spec.open_clip_name)
    embed_dim = _embed_dim(clip, spec)
    provenance = _provenance(spec, clip, tokenizer, embed_dim, open_clip.__version__)
    return LoadedClip(
        model=clip,
        preprocess=preprocess,
        tokenizer=tokenizer,
        provenance=provenance,
        embed_dim=embed_dim,
        model_id=spec.model_id,
        device=device,
        precision=precision,
    )


def tiny_model_config(
    *,
    embed_dim: int = 64,
    image_size: int = 64,
    patch_size: int = 8,
    width: int = 128,
    layers: int = 2,
    context_length: int = 77,
) -> dict:
    """A small open_clip config for tests and demos; vocab 49408 so open_clip's tokenizer fits it."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "patch_size": patch_size},
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": width,
            "heads": max(1, width // 64),
            "layers": layers,
        },
    }


def write_model_config(path: str | os.PathLike, config: dict) -> Path:
    """Write an open_clip model config JSON (the file ``--model`` accepts)."""
    from mmdata.atomic import write_json

    path = Path(path)
    write_json(path, config)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A model state dict from a plain state dict, an open_clip training checkpoint or safetensors."""
    import torch

    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # weights_only refuses pickled objects: say so, never fall back
            raise ModelLoadError(
                f"checkpoint {path} cannot be read safely (weights_only): {error}. "
                f"Save a plain state dict (torch.save(model.state_dict(), path)) or safetensors."
            ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ModelLoadError(f"checkpoint {path} holds no state dict")
    if all(name.startswith("module.") for name in state):
        state = {name[len("module."):]: tensor for name, tensor in state.items()}
    return state


def _load_checkpoint_into(clip, path: str) -> None:
    state = read_checkpoint(path)
    if "logit_scale" in state and state["logit_scale"].ndim != clip.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(clip.logit_scale.shape)
    hint = "is --model the architecture it was trained with?"
    try:
        result = clip.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ModelLoadError(f"checkpoint {path} does not fit the model ({hint}): {str(error)[:500]}") from error
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"checkpoint {path} does not fit the model ({hint}): missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def _provenance(spec: ModelSpec, clip, tokenizer, embed_dim: int, open_clip_version: str) -> dict:
    from open_clip.model import get_model_preprocess_cfg

    preprocess_cfg = get_model_preprocess_cfg(clip)
    return {
        "model_id": spec.model_id,
        "model": spec.model,
        "model_config": spec.config,
        "model_config_sha256": spec.config_sha256,
        "pretrained": spec.pretrained,
        "weights": spec.weights,
        "checkpoint_sha256": spec.checkpoint_sha256,
        "embed_dim": embed_dim,
        "image_size": list(_pair(preprocess_cfg.get("size"))),
        "image_mean": list(preprocess_cfg.get("mean", ())),
        "image_std": list(preprocess_cfg.get("std", ())),
        "interpolation": preprocess_cfg.get("interpolation"),
        "resize_mode": preprocess_cfg.get("resize_mode"),
        "tokenizer": (spec.config or {}).get("text_cfg", {}).get("hf_tokenizer_name") or type(tokenizer).__name__,
        "context_length": int(getattr(tokenizer, "context_length", 0) or 0),
        "open_clip_version": open_clip_version,
    }


def _embed_dim(clip, spec: ModelSpec) -> int:
    if spec.config is not None:
        return int(spec.config["embed_dim"])
    projection = getattr(clip, "text_projection", None)
    if projection is not None and hasattr(projection, "shape"):
        return int(projection.shape[-1])
    return int(clip.visual.output_dim)


def _pair(size) -> tuple:
    if size is None:
        return ()
    return (size, size) if isinstance(size, int) else tuple(size)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"model config {path} is not readable JSON: {error}") from error
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
    if missing:
        raise ModelLoadError(
            f"model config {path} lacks {missing}: an open_clip config has embed_dim, vision_cfg, text_cfg"
        )
    return config


_REGISTERED: dict[str, Path] = {}


def _register_config(name: str, config: dict) -> str:
    """Register ``config`` with open_clip under a content-addressed name (no clash between files)."""
    import open_clip

    if name not in _REGISTERED:
        folder = Path(tempfile.mkdtemp(prefix="mmdata-model-configs-"))
        path = folder / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)
        _REGISTERED[name] = path
    return name


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith(CHECKPOINT_SUFFIXES)
