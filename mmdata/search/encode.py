"""Encode a search query with the very model that made a dataset's embeddings, or refuse.

The model comes from the stored provenance (``scores/<model_id>/model.json``): the open_clip name or
the config itself (kept in the provenance, so a moved config file does not matter) and the weights —
a pretrained tag, random init (seeded), or a checkpoint whose sha256 must still match. Embeddings of
two different models live in unrelated spaces, so any difference is an error, never a warning.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from mmdata.score.model import ModelSpec, file_sha256, resolve_model

# Provenance fields that identify the weights (as ``mmdata score`` checks when adding to tables),
# and the ModelSpec attribute holding each.
IDENTITY_FIELDS = {
    "model_config_sha256": "config_sha256", "weights": "weights", "checkpoint_sha256": "checkpoint_sha256",
}


class ModelMismatchError(ValueError):
    """The query model is not the one that made the stored embeddings."""


def describe(provenance: dict) -> str:
    weights = provenance.get("weights")
    if weights == "checkpoint":
        source = f"checkpoint {provenance.get('pretrained')} (sha256 {str(provenance.get('checkpoint_sha256'))[:12]})"
    elif weights == "tag":
        source = f"pretrained {provenance.get('pretrained')}"
    else:
        source = weights
    return f"{provenance.get('model_id')}: {provenance.get('model')} with {source}"


def stored_spec(provenance: dict, pretrained: str | None = None) -> ModelSpec:
    """The spec that reproduces the stored model; ``pretrained`` points at a moved checkpoint.

    Raises :class:`ModelMismatchError` when the checkpoint is gone or is not the same file.
    """
    model = _model_source(provenance)
    weights = provenance.get("weights")
    if weights == "checkpoint":
        path = pretrained or provenance.get("pretrained")
        expected = provenance.get("checkpoint_sha256")
        if not path or not os.path.isfile(path):
            raise ModelMismatchError(
                f"the embeddings were made by {describe(provenance)}, but that checkpoint is gone: "
                f"pass --pretrained PATH to the same file (sha256 {expected})"
            )
        actual = file_sha256(path)
        if actual != expected:
            raise ModelMismatchError(
                f"checkpoint {path} (sha256 {actual[:12]}) is not the one that made the embeddings "
                f"({describe(provenance)}): its vectors would not be comparable; pass the original checkpoint"
            )
        return resolve_model(model, path)
    if pretrained is not None and pretrained != provenance.get("pretrained"):
        raise ModelMismatchError(
            f"--pretrained {pretrained} differs from the weights that made the embeddings ({describe(provenance)})"
        )
    return resolve_model(model, provenance.get("pretrained") if weights in ("tag", "hf-hub") else None)


def same_model(spec: ModelSpec, provenance: dict) -> bool:
    """Whether ``spec`` names the weights recorded in ``provenance``."""
    if any(getattr(spec, attribute) != provenance.get(name) for name, attribute in IDENTITY_FIELDS.items()):
        return False
    if spec.config_sha256 is None and spec.model != provenance.get("model"):
        return False  # two open_clip names with the same random-init / tag flavour
    return spec.weights != "tag" or spec.pretrained == provenance.get("pretrained")


def match_query_model(
    model: str, pretrained: str | None, records: dict[str, dict], default_id: str
) -> tuple[str, ModelSpec]:
    """The user named a model for the query: it must be one that made stored embeddings.

    ``records`` maps scored model ids to their provenance; returns the matching id and the spec.
    """
    spec = resolve_model(model, pretrained)
    for model_id, provenance in records.items():
        if same_model(spec, provenance):
            return model_id, spec
    raise ModelMismatchError(
        f"the query model {spec.model_id} ({model}, {pretrained or 'random init'}) differs from the model "
        f"that made these embeddings ({describe(records[default_id])}); vectors of different models are not "
        f"comparable. Search without --model to use the stored one, or score the dataset with {model} "
        f"first (`mmdata score DIR --model {model}`) and search that model's index"
    )


_ENCODERS: dict[tuple, "QueryEncoder"] = {}


class QueryEncoder:
    """The stored model, loaded once per process, turning a text or an image into a unit vector."""

    def __init__(self, spec: ModelSpec, provenance: dict):
        from mmdata.score.model import load_clip

        self.clip = load_clip(spec, device="cpu", precision="fp32")
        if self.clip.embed_dim != provenance.get("embed_dim", self.clip.embed_dim):
            raise ModelMismatchError(f"loaded model gives {self.clip.embed_dim}-d vectors, "
                                     f"stored ones are {provenance['embed_dim']}-d")

    @classmethod
    def for_provenance(cls, provenance: dict, spec: ModelSpec) -> "QueryEncoder":
        cache_key = (json.dumps(provenance.get("model_config"), sort_keys=True), spec.open_clip_name, spec.weights,
                     spec.pretrained, spec.checkpoint_sha256)
        if cache_key not in _ENCODERS:
            _ENCODERS[cache_key] = cls(spec, provenance)
        return _ENCODERS[cache_key]

    def encode_text(self, text: str) -> np.ndarray:
        tokens = self.clip.tokenizer([text])
        return self.clip.encode_texts(tokens).cpu().numpy()[0]

    def encode_image(self, image: str | os.PathLike | bytes) -> np.ndarray:
        from PIL import Image

        source = io.BytesIO(image) if isinstance(image, bytes) else image
        try:
            with Image.open(source) as opened:
                pixels = self.clip.preprocess(opened.convert("RGB"))
        except (OSError, ValueError) as error:
            name = image if not isinstance(image, bytes) else "<bytes>"
            raise ValueError(f"query image {name} cannot be read: {error}") from error
        return self.clip.encode_images(pixels.unsqueeze(0)).cpu().numpy()[0]


def _model_source(provenance: dict) -> str:
    """An open_clip name, or a config JSON holding the stored config (the original file may be gone)."""
    config = provenance.get("model_config")
    if provenance.get("model_config_sha256") is None or config is None:
        return provenance["model"]
    sha = provenance["model_config_sha256"]
    if sha not in _CONFIG_FILES:
        original = Path(provenance["model"])
        folder = Path(tempfile.mkdtemp(prefix="mmdata-query-model-"))
        path = folder / (original.name if original.suffix == ".json" else f"{original.name}.json")
        path.write_text(json.dumps(config))
        _CONFIG_FILES[sha] = str(path)
    return _CONFIG_FILES[sha]


_CONFIG_FILES: dict[str, str] = {}  # config sha256 -> a JSON file holding it, written once per process
