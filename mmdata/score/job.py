"""``mmdata.score``: CLIP-score every stored sample of a dataset with actors, one table per shard.

The driver only names the model (no weights built here), lists the complete shards that have no
score table yet, and hands them to actors; each actor writes its shards' tables atomically, so a
killed job resumes where it stopped. Provenance goes to ``scores/<model_id>/model.json``, the tables'
schema metadata and, when the dataset has one, ``manifest.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from mmdata import layout
from mmdata.atomic import remove_temporaries, write_json
from mmdata.execution import Execution, StageProgress, using
from mmdata.options import stage_settings
from mmdata.schemas.samples import SUCCESS
from mmdata.score import store
from mmdata.score.config import ScoreConfig
from mmdata.score.model import ModelSpec, resolve_model
from mmdata.stats import Stats
from mmdata.storage import Location, read_parquet, read_parquet_schema

# model.json is the provenance dict plus these fields about the runs that wrote the tables.
_RUN_FIELDS = ("keep_embeddings", "precision", "device", "scored_at", "last_run")
# Decode threads share the actor's cores with torch's OpenMP threads: spinning OpenMP waits starve
# them and stall every parallel region behind a preempted thread (ViT-B-32 on 2 CPU cores: 0.75 of
# the bare forward's throughput with the default policy, 0.97 with passive waits).
ACTOR_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}
# Provenance fields that identify the weights: a re-run must match them to add to the same tables.
_IDENTITY_FIELDS = ("model_config_sha256", "weights", "checkpoint_sha256")


def score(config: ScoreConfig | None = None, *, execution: Execution = None, **options) -> dict:
    """Score ``config.dataset`` with ``config.model``/``config.pretrained``; returns the run summary.

    Pass a :class:`ScoreConfig` or its options flat: ``score(dataset="data", model="ViT-B-32",
    pretrained="/ckpt/vit_b_32.safetensors", batch_size=128)``. ``execution`` (or the flat
    ``executor``/``workers``/``ray_address``): where the actors run. The dataset may be an fsspec URL
    (``storage_options`` for its filesystem); every table is one whole-object write, so a table
    present is a table complete, on a bucket as on a disk.
    """
    config, execution = stage_settings(ScoreConfig, "score", config, execution, options)
    root = config.root
    spec = resolve_model(config.model, config.pretrained)
    output_dir = layout.model_dir(root, spec.model_id)
    output_dir.make_dirs()
    remove_temporaries(output_dir)
    record = layout.read_model_record(root, spec.model_id)
    _check_same_model(record, spec, config)

    shards = layout.complete_shards(root)
    if not shards:
        raise ValueError(f"{root} holds no complete shard (no NNNNN_stats.json): download into it first")
    scored = set(output_dir.names(".parquet"))  # one listing, not a request per shard
    todo = [shard for shard in shards if f"{shard}.parquet" not in scored]
    started = time.perf_counter()
    run = _Run(root, spec, config, record)
    if todo:
        from mmdata.score.actor import ScoreActor

        progress = StageProgress(f"scoring with {spec.model_id}", total=_stored_samples(root, todo), tasks=len(shards),
                                 tasks_done=len(shards) - len(todo), final_counts=_final_counts,
                                 show=config.show_progress)
        with using(execution) as executor, progress:
            cluster = executor.resources()
            plan = plan_actors(config, len(todo), cluster.get("CPU", 0), cluster.get("GPU", 0))
            executor.run_on_actors(
                ScoreActor,
                (spec, config, int(plan.num_cpus)),
                "score",
                [
                    (shard, layout.tar_path(root, shard), layout.score_path(root, spec.model_id, shard),
                     executor.reporter(shard))
                    for shard in todo
                ],
                actors=plan.actors,
                num_cpus=plan.num_cpus,
                num_gpus=plan.num_gpus,
                env_vars=ACTOR_ENVIRONMENT,
                setup_method="setup",
                on_setup=run.actor_ready,
                on_result=run.shard_done,
                progress=progress,
            )
    seconds = time.perf_counter() - started
    summary = run.finish(shards=len(shards), skipped=len(shards) - len(todo), seconds=seconds)
    if config.default:
        store.set_default_model(root, spec.model_id)
    _update_manifest(root, spec.model_id, summary)
    return summary


class _Run:
    """Collects the actors' setup reports and shard outcomes, and keeps ``model.json`` current."""

    def __init__(self, root: Location, spec: ModelSpec, config: ScoreConfig, record: dict | None):
        self.root, self.spec, self.config = root, spec, config
        self.record = record
        self.stats = Stats()
        self.failures: list[str] = []
        self.actors: list[dict] = []

    def actor_ready(self, report: dict) -> None:
        self.actors.append({key: report[key] for key in ("device", "precision", "torch_threads", "decode_workers")})
        if len(self.actors) == 1:  # before any table is written, so a killed job leaves its record
            self.record = {
                **report["provenance"],
                "keep_embeddings": not self.config.no_embeddings,
                "precision": report["precision"],  # fp32 on CPU whatever was asked
                "device": report["device"],
                "scored_at": _now(),
                "last_run": None,
            }
            store.write_model_record(self.root, self.spec.model_id, self.record)

    def shard_done(self, outcome) -> None:
        self.stats = self.stats + outcome.stats
        if outcome.error is not None:
            self.failures.append(outcome.error)

    def finish(self, *, shards: int, skipped: int, seconds: float) -> dict:
        counts = dict(sorted(self.stats.counts.items()))
        scored_samples = counts.get("samples", 0)
        summary = {
            "model_id": self.spec.model_id,
            "output_dir": layout.model_dir(self.root, self.spec.model_id).url,
            "shards": shards,
            "shards_skipped": skipped,
            "counts": counts,
            "failures": self.failures,
            "seconds": round(seconds, 3),
            # model time inside the actors, without the executor's start-up and model loading
            "actor_seconds": round(self.stats.seconds, 3),
            "samples_per_second": round(scored_samples / seconds, 2) if seconds and scored_samples else 0.0,
            "actors": self.actors,
        }
        if self.record is not None and (self.actors or self.record.get("last_run") is None):
            self.record.update(
                last_run={key: summary[key] for key in ("shards", "shards_skipped", "counts", "seconds")}
            )
            if self.actors:
                self.record["scored_at"] = _now()
            store.write_model_record(self.root, self.spec.model_id, self.record)
        summary["provenance"] = _provenance_of(self.record) if self.record else None
        return summary


def _check_same_model(record: dict | None, spec: ModelSpec, config: ScoreConfig) -> None:
    """A re-run adds to existing tables only with the same weights and the same embedding choice."""
    if record is None:
        return
    current = {
        "model_config_sha256": spec.config_sha256,
        "weights": spec.weights,
        "checkpoint_sha256": spec.checkpoint_sha256,
    }
    different = [name for name in _IDENTITY_FIELDS if record.get(name) != current[name]]
    if spec.weights == "tag" and record.get("pretrained") != spec.pretrained:
        different.append("pretrained")
    folder = layout.model_dir(config.root, spec.model_id)
    if different:
        raise ValueError(
            f"{folder} holds scores of other weights ({', '.join(different)} differ); "
            f"remove that folder to re-score, or score into another dataset copy"
        )
    if record.get("keep_embeddings") != (not config.no_embeddings):
        kept = "with" if record.get("keep_embeddings") else "without"
        raise ValueError(f"{folder} was scored {kept} embeddings; re-run with the same --no-embeddings setting")


def _stored_samples(root: Location, shards: list[str]) -> int | None:
    """How many samples the shards hold (rows with status success), for the progress bar."""
    import pyarrow.compute as pc

    total = 0
    for shard in shards:
        path = layout.parquet_path(root, shard)
        if "status" not in read_parquet_schema(path).names:
            return None
        total += pc.sum(pc.equal(read_parquet(path, columns=["status"]).column("status"), SUCCESS)).as_py() or 0
    return total


def _final_counts(outcome) -> tuple[str, dict[str, int]]:
    return outcome.shard, dict(outcome.stats.counts)


def _provenance_of(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in _RUN_FIELDS}


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    num_cpus: float
    num_gpus: float


def plan_actors(config: ScoreConfig, shards_to_score: int, cluster_cpus: float, cluster_gpus: float) -> ActorPlan:
    """How many actors and what each asks the executor for: declared here, the hardware is probed in the actor."""
    use_gpus = config.device == "cuda" or (config.device == "auto" and cluster_gpus > 0)
    if not use_gpus:
        actors, num_gpus = config.actors or 1, 0.0
    elif cluster_gpus <= 0:
        raise ValueError("--device cuda but the executor has no GPU (only Ray sees GPUs); use --device cpu or auto")
    else:
        actors, num_gpus = _gpu_actors(config, cluster_cpus, cluster_gpus)
    actors = max(1, min(actors, shards_to_score))
    if num_gpus * actors > cluster_gpus + 1e-9:
        raise ValueError(
            f"{actors} actor(s) x {num_gpus:g} GPU need more than the {cluster_gpus:g} GPU(s) the executor has; "
            f"use fewer --actors or a smaller --gpus-per-actor"
        )
    num_cpus = config.cpus_per_actor or max(1, int(cluster_cpus // actors))
    if num_cpus * actors > cluster_cpus + 1e-9:
        raise ValueError(
            f"{actors} actor(s) x {num_cpus:g} CPUs need more than the cluster's {cluster_cpus:g}; lower --actors"
        )
    return ActorPlan(actors=actors, num_cpus=num_cpus, num_gpus=num_gpus)


def _gpu_actors(config: ScoreConfig, cpus: float, gpus: float) -> tuple[int, float]:
    """(actors, GPUs each): what is given, else several actors per GPU so that decoding, which
    holds the GIL in part, runs in several processes (one actor per 4 CPUs, at most 4 per GPU)."""
    if config.actors is not None and config.gpus_per_actor is not None:
        return config.actors, config.gpus_per_actor
    if config.gpus_per_actor is not None:
        return max(1, int(gpus / config.gpus_per_actor + 1e-9)), config.gpus_per_actor
    if config.actors is not None:
        return config.actors, min(1.0, gpus / config.actors)
    per_gpu = max(1, min(4, int(cpus / gpus) // 4))
    return int(gpus) * per_gpu or 1, 1.0 / per_gpu


def _update_manifest(root: Location, model_id: str, summary: dict) -> None:
    """Mirror the model's record into ``manifest.json`` when the download wrote one.

    A missing manifest is not created: ``mmdata download`` reads its presence as "download finished".
    """
    path = layout.manifest_path(root)
    try:
        manifest = path.read_json()
    except FileNotFoundError:
        return
    scores = manifest.setdefault("scores", {})
    scores.setdefault("models", {})[model_id] = {
        "provenance": summary["provenance"],
        "folder": f"scores/{model_id}",
        "scored_at": _now(),
        "counts": summary["counts"],
    }
    scores["default"] = layout.default_model(root)
    write_json(path, manifest)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
