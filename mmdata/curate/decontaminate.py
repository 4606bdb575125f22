"""Decontamination → ``DIR/annotations/contamination.parquet``: which samples match an evaluation image.

Three tiers, the first match wins: ``exact`` (same bytes or same decoded pixels), ``near`` (the
perceptual-hash test of the dedup near tier) and ``embedding`` (cosine similarity above ``1 - eps``
between the sample's stored CLIP image embedding and the evaluation image's, encoded with the same
model rebuilt from the score run's provenance, or read from EVAL when it is a dataset scored by that
model).

The evaluation set is small and held in memory; the dataset is not. The shards not hashed yet are
hashed first (a task each, into the hash cache dedup shares); then each shard is one task that matches
its hashes and embeddings against the evaluation set and writes its rows as a part under
``DIR/annotations/.contamination/``; the driver then streams the parts,
in shard order, into ``contamination.parquet`` (commit-last) and removes them.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata import layout
from mmdata.atomic import parquet_writer, write_parquet
from mmdata.curate.hashes import NearHashes, ensure_hashes, hash_rows, near_matches, shard_hashes
from mmdata.curate.semantic import normalised
from mmdata.execution import Execution, StageProgress, sized, using
from mmdata.options import stage_settings
from mmdata.schemas.annotations import CONTAMINATION_SCHEMA
from mmdata.schemas.members import IMAGE_EXTENSIONS, image_member
from mmdata.shards import iter_samples
from mmdata.storage import Location, location, read_parquet
from mmdata.storage.location import read_all
from mmdata.storage.reads import prefetched

CONTAMINATION_METADATA_KEY = b"mmdata.contamination"


@dataclass
class EvalImages:
    """The evaluation set: a name per image (relative path, or key for a dataset) and its bytes."""

    names: list[str]
    images: list[bytes]
    dataset: Location | None = None  # set when EVAL is an mmdata dataset


@dataclass
class ContaminationResult:
    path: Location  # DIR/annotations/contamination.parquet: CONTAMINATION_SCHEMA, one row per stored sample
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def table(self) -> pa.Table:
        """The whole written table, read on demand (for datasets that fit in memory)."""
        return read_parquet(self.path)


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
    batch_size: int = 8192  # samples compared with every evaluation embedding at a time
    storage_options: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.against:
            raise ValueError("against is required: a folder of evaluation images or an mmdata dataset")
        object.__setattr__(self, "against", self.evaluation_set.url)
        if not 0 <= self.hamming <= 24:
            raise ValueError(f"hamming must be in [0, 24] bits of 64, got {self.hamming}")
        if not 0.0 <= self.eps < 2.0:
            raise ValueError(f"eps must be a cosine distance in [0, 2), got {self.eps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    @property
    def evaluation_set(self) -> Location:
        """The folder of evaluation images (or the dataset) to match against, on its filesystem."""
        return location(self.against, self.storage_options)


@dataclass(frozen=True)
class EvalReference:
    """What each shard's task matches against: the evaluation set's hashes and embeddings (small)."""

    exact: dict[str, dict[str, str]]  # hash column -> value -> evaluation name (the last name of a value wins)
    near_names: list[str]  # name of each row of ``near``
    near: NearHashes
    embedding_names: list[str]  # name of each row of the (shared) unit embeddings; empty: no embedding tier
    model_id: str | None
    hamming: int
    colour_tolerance: float
    eps: float
    batch_size: int


TIERS = ("exact", "near", "embedding")


def decontaminate(root: layout.Root, config: DecontaminateConfig | None = None, *, execution: Execution = None,
                  **options) -> ContaminationResult:
    """Mark the samples of ``root`` that match an image of ``config.against``.

    Pass a :class:`DecontaminateConfig` or its options flat (``decontaminate(root, against="eval/")``);
    the shards not hashed yet are hashed, then each shard is matched, as tasks on ``execution`` (or the
    flat ``executor``/``workers``). ``root`` may be a URL; ``storage_options`` (a config field) go to
    its filesystem and ``against``'s.
    """
    config, execution = stage_settings(DecontaminateConfig, "decontaminate", config, execution, options)
    root = layout.dataset(root, config.storage_options)
    shards = layout.complete_shards(root)
    if not shards:
        raise ValueError(f"{root} holds no complete shard: nothing to decontaminate")
    evaluation = load_eval_images(config.evaluation_set)
    eval_hashes = hash_rows(list(zip(evaluation.names, evaluation.images)))
    eval_names = eval_hashes.column("key").to_pylist()
    exact = {
        column: {value: name for value, name in zip(eval_hashes.column(column).to_pylist(), eval_names)
                 if value is not None}
        for column in ("sha256", "pixel_hash")
    }
    eval_rows, eval_near = NearHashes.from_table(eval_hashes)
    embedding_model = _embedding_model(root, config.model, config.embedding)
    embedding_names, eval_unit = [], np.zeros((0, 0), np.float32)
    if embedding_model is not None:
        decodable = set(eval_rows.tolist())  # undecodable evaluation files were counted, not encoded
        encodable = EvalImages(
            [name for row, name in enumerate(evaluation.names) if row in decodable],
            [image for row, image in enumerate(evaluation.images) if row in decodable],
            evaluation.dataset,
        )
        embedding_names, eval_vectors = _eval_embeddings(root, embedding_model, encodable, config.pretrained,
                                                         config.device)
        eval_unit = normalised(eval_vectors)
    reference = EvalReference(
        exact, [eval_names[row] for row in eval_rows], eval_near, list(embedding_names), embedding_model,
        config.hamming, config.colour_tolerance, config.eps, config.batch_size,
    )
    scratch = layout.annotations_dir(root) / ".contamination"
    scratch.remove_tree()  # parts a failed run left
    with using(sized(execution, len(shards))) as executor:
        shards = ensure_hashes(root, execution=executor)
        shared_unit = executor.share(eval_unit)
        progress = StageProgress("decontaminating", tasks=len(shards), final_counts=lambda found: found)
        with progress:
            found = executor.run_tasks(contamination_shard,
                                       [(root, shard, reference, shared_unit) for shard in shards], progress=progress)
    tiers = ["exact", "near", *(["embedding"] if embedding_model is not None else [])]
    summed = sum((Counter(shard_counts) for _, shard_counts in found), Counter())
    counts = {
        "examined": summed["examined"],
        "eval_images": len(evaluation.names),
        "eval_undecodable": len(evaluation.names) - len(eval_rows),
        "contaminated": summed["contaminated"],
        **{tier: summed[tier] for tier in tiers},
    }
    settings = {
        "against": config.against, "hamming": config.hamming, "colour_tolerance": config.colour_tolerance,
        "eps": config.eps, "model": embedding_model, "counts": counts,
    }
    path = layout.annotations_dir(root) / "contamination.parquet"
    with parquet_writer(path, CONTAMINATION_SCHEMA) as writer:
        for part in prefetched(lambda shard: read_parquet(_part_path(root, shard)), shards, root):
            writer.write(part)
        writer.set_metadata({CONTAMINATION_METADATA_KEY: json.dumps(settings, sort_keys=True)})
    scratch.remove_tree()
    return ContaminationResult(path, counts)


def _part_path(root: Location, shard: str) -> Location:
    return layout.annotations_dir(root) / ".contamination" / f"{shard}.parquet"


def contamination_shard(root: Location, shard: str, reference: EvalReference, eval_unit: np.ndarray
                        ) -> tuple[str, dict[str, int]]:
    """The task of one shard: match its stored samples against the evaluation set, write its part;
    returns the shard and its counts."""
    hashes = shard_hashes(root, shard)
    keys = hashes.column("key").combine_chunks()
    reason = np.full(len(keys), None, dtype=object)
    matched_by = np.full(len(keys), None, dtype=object)

    def mark(rows: np.ndarray, names: list[str], tier: str) -> None:
        for row, name in zip(rows, names):
            if reason[row] is None:
                reason[row], matched_by[row] = tier, name

    for column, lookup in reference.exact.items():
        values = hashes.column(column).to_pylist()
        rows = [row for row, value in enumerate(values) if value in lookup]
        mark(np.asarray(rows, dtype=np.int64), [lookup[values[row]] for row in rows], "exact")

    sample_rows, sample_near = NearHashes.from_table(hashes)
    query, matched, distance = near_matches(sample_near, reference.near, reference.hamming, reference.colour_tolerance)
    order = np.lexsort((distance, query))  # the closest evaluation image first
    mark(sample_rows[query[order]], [reference.near_names[row] for row in matched[order]], "near")

    if reference.embedding_names:
        rows, names = _embedding_matches(root, shard, keys, reference, np.asarray(eval_unit))
        mark(rows, names, "embedding")

    contaminated = np.array([value is not None for value in reason], dtype=bool)
    table = pa.table({
        "key": keys,
        "contaminated": pa.array(contaminated, pa.bool_()),
        "contaminated_by": pa.array(matched_by, pa.string()),
        "contamination_reason": pa.array(reason, pa.string()),
    })
    write_parquet(table, _part_path(root, shard), CONTAMINATION_SCHEMA)
    counts = {"examined": len(keys), "contaminated": int(contaminated.sum())}
    counts.update({tier: int((reason == tier).sum()) for tier in TIERS})
    return shard, counts


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


def _embedding_matches(root: Location, shard: str, keys: pa.Array, reference: EvalReference,
                       eval_unit: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Rows (of ``keys``, the shard's stored samples) whose image embedding has cosine > 1 - eps with an
    evaluation image, and that image; ``batch_size`` samples at a time."""
    from mmdata.table import iter_embeddings

    rows, names = [], []
    for sample_keys, sample_vectors in iter_embeddings(root, "image", reference.model_id, shards=[shard]):
        positions = pc.index_in(sample_keys, value_set=keys).to_numpy(zero_copy_only=False)
        for start in range(0, len(sample_keys), reference.batch_size):
            batch = np.asarray(sample_vectors[start : start + reference.batch_size], dtype=np.float32)
            similarity = normalised(batch) @ eval_unit.T
            best = similarity.argmax(axis=1)
            hit = np.flatnonzero(similarity[np.arange(len(best)), best] > 1.0 - reference.eps)
            for local in hit:
                position = positions[start + local]
                if not np.isnan(position):
                    rows.append(int(position))
                    names.append(reference.embedding_names[best[local]])
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
