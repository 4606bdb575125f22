"""Decontamination → ``DIR/annotations/contamination.parquet``: which samples match an evaluation image.

Three tiers, the first match wins: ``exact`` (same bytes or same decoded pixels), ``near`` (the
perceptual-hash test of the dedup near tier) and ``embedding`` (cosine similarity above ``1 - eps``
between the sample's stored CLIP image embedding and the evaluation image's, encoded with the same
model rebuilt from the score run's provenance, or read from EVAL when it is a dataset scored by that
model).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmdata import layout
from mmdata.atomic import write_parquet
from mmdata.curate.hashes import NearHashes, dataset_hashes, hash_rows, near_matches
from mmdata.curate.semantic import normalised
from mmdata.execution import Execution
from mmdata.options import stage_settings
from mmdata.schemas.annotations import CONTAMINATION_SCHEMA
from mmdata.schemas.members import IMAGE_EXTENSIONS, image_member
from mmdata.shards import iter_samples
from mmdata.storage import Location, location
from mmdata.storage.location import read_all

CONTAMINATION_METADATA_KEY = b"mmdata.contamination"


@dataclass
class EvalImages:
    """The evaluation set: a name per image (relative path, or key for a dataset) and its bytes."""

    names: list[str]
    images: list[bytes]
    dataset: Location | None = None  # set when EVAL is an mmdata dataset


@dataclass
class ContaminationResult:
    table: pa.Table  # CONTAMINATION_SCHEMA, one row per stored sample
    counts: dict[str, int] = field(default_factory=dict)
    path: Location | None = None


def load_eval_images(against: layout.Root, storage_options: dict | None = None) -> EvalImages:
    """Images of an mmdata dataset (its complete shards) or of a folder (recursively, by extension);
    either may be a URL."""
    against = location(against, storage_options)
    if not against.is_dir():
        raise FileNotFoundError(f"--against {against} is not a folder of images nor an mmdata dataset")
    shards = layout.complete_shards(against)
    names, images = [], []
    if shards:
        for shard in shards:
            for key, members in iter_samples(layout.tar_path(against, shard)):
                blob = image_member(members)
                if blob is not None:
                    names.append(key)
                    images.append(blob)
        return EvalImages(names, images, dataset=against)
    names = sorted(_image_names(against), key=lambda name: name.split("/"))
    images = read_all([_under(against, name) for name in names])
    if not names:
        raise ValueError(f"--against {against} holds no images ({', '.join(IMAGE_EXTENSIONS)}) and no mmdata shards")
    return EvalImages(names, images)


def _image_names(folder: Location, prefix: str = "") -> list[str]:
    """Paths (relative to the folder walked, ``/``-separated) of the image files under ``folder``."""
    found = []
    for name, entry in folder.list().items():
        if entry["type"] == "directory":
            found += _image_names(folder / name, f"{prefix}{name}/")
        elif name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS and "." in name:
            found.append(prefix + name)
    return found


def _under(folder: Location, relative: str) -> Location:
    for part in relative.split("/"):
        folder = folder / part
    return folder


@dataclass(frozen=True, kw_only=True)
class DecontaminateConfig:
    """``embedding``: None runs the embedding tier when the dataset has image embeddings (from
    ``mmdata score``), True requires it, False skips it. ``model`` picks the score run (a model id
    under ``DIR/scores/``); ``pretrained`` replaces a checkpoint path that no longer exists.
    ``eps`` is a cosine distance: larger flags more. ``against`` (and the dataset) may be URLs;
    ``storage_options`` go to their filesystem."""

    against: str
    model: str | None = None
    hamming: int = 8
    colour_tolerance: float = 24.0
    eps: float = 0.05
    embedding: bool | None = None
    pretrained: str | None = None
    device: str = "cpu"
    storage_options: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.against:
            raise ValueError("against is required: a folder of evaluation images or an mmdata dataset")
        object.__setattr__(self, "against", self.evaluation_set.url)
        if not 0 <= self.hamming <= 24:
            raise ValueError(f"hamming must be in [0, 24] bits of 64, got {self.hamming}")
        if not 0.0 <= self.eps < 2.0:
            raise ValueError(f"eps must be a cosine distance in [0, 2), got {self.eps}")

    @property
    def evaluation_set(self) -> Location:
        """The folder of evaluation images (or the dataset) to match against, on its filesystem."""
        return location(self.against, self.storage_options)


def decontaminate(root: layout.Root, config: DecontaminateConfig | None = None, *, execution: Execution = None,
                  **options) -> ContaminationResult:
    """Mark the samples of ``root`` that match an image of ``config.against``.

    Pass a :class:`DecontaminateConfig` or its options flat (``decontaminate(root, against="eval/")``);
    the dataset's hashes are computed as tasks on ``execution`` (or the flat ``executor``/``workers``).
    ``root`` may be a URL; ``storage_options`` (a config field) go to its filesystem and ``against``'s.
    """
    config, execution = stage_settings(DecontaminateConfig, "decontaminate", config, execution, options)
    against, model, hamming, colour_tolerance = config.against, config.model, config.hamming, config.colour_tolerance
    eps, embedding, pretrained, device = config.eps, config.embedding, config.pretrained, config.device
    root = layout.dataset(root, config.storage_options)
    if not layout.complete_shards(root):
        raise ValueError(f"{root} holds no complete shard: nothing to decontaminate")
    evaluation = load_eval_images(config.evaluation_set)
    eval_hashes = hash_rows(list(zip(evaluation.names, evaluation.images)))
    samples = dataset_hashes(root, execution=execution)
    keys = samples.column("key").to_pylist()
    count = len(keys)
    reason = np.full(count, None, dtype=object)
    matched_by = np.full(count, None, dtype=object)

    def mark(rows: np.ndarray, names: list[str], tier: str) -> None:
        for row, name in zip(rows, names):
            if reason[row] is None:
                reason[row], matched_by[row] = tier, name

    eval_names = eval_hashes.column("key").to_pylist()
    for column in ("sha256", "pixel_hash"):
        lookup = {
            value: name
            for value, name in zip(eval_hashes.column(column).to_pylist(), eval_names)
            if value is not None
        }
        values = samples.column(column).to_pylist()
        rows = [row for row, value in enumerate(values) if value in lookup]
        mark(np.asarray(rows, dtype=np.int64), [lookup[values[row]] for row in rows], "exact")

    sample_rows, sample_near = NearHashes.from_table(samples)
    eval_rows, eval_near = NearHashes.from_table(eval_hashes)
    query, reference, distance = near_matches(sample_near, eval_near, hamming, colour_tolerance)
    order = np.lexsort((distance, query))  # the closest evaluation image first
    mark(sample_rows[query[order]], [eval_names[eval_rows[r]] for r in reference[order]], "near")

    tiers = ["exact", "near"]
    embedding_model = _embedding_model(root, model, embedding)
    if embedding_model is not None:
        tiers.append("embedding")
        decodable = set(eval_rows.tolist())  # undecodable evaluation files were counted, not encoded
        encodable = EvalImages(
            [name for row, name in enumerate(evaluation.names) if row in decodable],
            [image for row, image in enumerate(evaluation.images) if row in decodable],
            evaluation.dataset,
        )
        rows, names = _embedding_matches(root, embedding_model, keys, encodable, eps, pretrained, device)
        mark(rows, names, "embedding")

    contaminated = np.array([value is not None for value in reason], dtype=bool)
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "contaminated": pa.array(contaminated),
            "contaminated_by": pa.array(matched_by, pa.string()),
            "contamination_reason": pa.array(reason, pa.string()),
        }
    )
    counts = {
        "examined": count,
        "eval_images": len(evaluation.names),
        "eval_undecodable": len(evaluation.names) - len(eval_rows),
        "contaminated": int(contaminated.sum()),
    }
    counts.update({tier: int((reason == tier).sum()) for tier in tiers})
    settings = {
        "against": against, "hamming": hamming, "colour_tolerance": colour_tolerance, "eps": eps,
        "model": embedding_model, "counts": counts,
    }
    table = table.replace_schema_metadata({CONTAMINATION_METADATA_KEY: json.dumps(settings, sort_keys=True).encode()})
    path = layout.annotations_dir(root) / "contamination.parquet"
    return ContaminationResult(write_parquet(table, path, CONTAMINATION_SCHEMA), counts, path)


def _embedding_model(root: Location, model: str | None, embedding: bool | None) -> str | None:
    """The score run (model id) whose embeddings the embedding tier uses, or None to skip it."""

    if embedding is False:
        return None
    runs = layout.scored_models(root)
    if model is not None:
        if model not in runs:
            raise ValueError(f"no score run {model!r} in {root}/scores (runs: {runs or 'none'})")
        return model
    chosen = layout.default_model(root)
    if chosen is None and embedding:
        raise ValueError(f"{root} has no score run: run `mmdata score` (with embeddings) first or drop --embedding")
    if chosen is not None and not (layout.read_model_record(root, chosen) or {}).get("keep_embeddings", True):
        if embedding:
            raise ValueError(f"{chosen} was scored with --no-embeddings: the embedding tier needs embeddings")
        return None
    return chosen


def _embedding_matches(
    root: Location, model_id: str, keys: list[str], evaluation: EvalImages, eps: float, pretrained: str | None,
    device: str,
) -> tuple[np.ndarray, list[str]]:
    """Sample rows whose image embedding has cosine > 1 - eps with an evaluation image, and that image."""
    from mmdata.table import read_embeddings

    sample_keys, sample_vectors = read_embeddings(root, "image", model_id)
    eval_names, eval_vectors = _eval_embeddings(root, model_id, evaluation, pretrained, device)
    position = {key: row for row, key in enumerate(keys)}
    eval_unit = normalised(eval_vectors)
    rows, names = [], []
    for start in range(0, len(sample_keys), 8192):
        similarity = normalised(sample_vectors[start : start + 8192]) @ eval_unit.T
        best = similarity.argmax(axis=1)
        hit = np.flatnonzero(similarity[np.arange(len(best)), best] > 1.0 - eps)
        for local in hit:
            key = sample_keys[start + local]
            if key in position:
                rows.append(position[key])
                names.append(eval_names[best[local]])
    return np.asarray(rows, dtype=np.int64), names


def _eval_embeddings(
    root: Location, model_id: str, evaluation: EvalImages, pretrained: str | None, device: str
) -> tuple[list[str], np.ndarray]:
    """Evaluation image embeddings: read from EVAL's own score run of the same model, else encoded."""
    if evaluation.dataset is not None and (layout.scores_dir(evaluation.dataset) / model_id / "model.json").exists():
        from mmdata.table import read_embeddings

        names, vectors = read_embeddings(evaluation.dataset, "image", model_id)
        return list(names), np.asarray(vectors, dtype=np.float32)

    provenance = layout.read_model_record(root, model_id)
    return evaluation.names, encode_images(provenance, evaluation.images, pretrained=pretrained, device=device)


def encode_images(
    provenance: dict, images: list[bytes], *, pretrained: str | None = None, device: str = "cpu", batch_size: int = 64
) -> np.ndarray:
    """Encode images with the model a score run used, rebuilt from its provenance record."""
    import io

    import torch
    from PIL import Image

    from mmdata.score.model import load_clip

    with tempfile.TemporaryDirectory() as scratch:
        model_name = provenance["model"]
        if provenance.get("model_config") and not Path(model_name).is_file():
            # the config file the run used is gone; its content is in the provenance, under the same stem
            model_name = str(Path(scratch) / Path(model_name).name)
            Path(model_name).write_text(json.dumps(provenance["model_config"]))
        weights = pretrained or provenance.get("pretrained")
        if provenance.get("weights") == "checkpoint" and not (weights and Path(weights).is_file()):
            raise ValueError(
                f"the checkpoint of score run {provenance['model_id']} ({weights}) is gone: pass pretrained=PATH"
            )
        clip = load_clip(model_name, weights, device=device)
        if clip.model_id != provenance["model_id"]:
            raise ValueError(
                f"rebuilt model {clip.model_id} differs from the score run's {provenance['model_id']}: "
                "pass the same weights"
            )
        vectors = []
        for start in range(0, len(images), batch_size):
            batch = [
                clip.preprocess(Image.open(io.BytesIO(blob)).convert("RGB"))
                for blob in images[start : start + batch_size]
            ]
            vectors.append(clip.encode_images(torch.stack(batch)).cpu().numpy())
    return np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, clip.embed_dim), np.float32)
