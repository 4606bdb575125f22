"""The offline demo: the whole curation loop on a synthetic web, scored against its ground truth.

``python -m mmdata.demo`` runs ``pipelines/demo.yaml``: generate a corpus with known junk, serve it on
127.0.0.1, download it, train a tiny CLIP filter network on a clean seed subset (streamed with
``mmdata.stream``, in the style of Data Filtering Networks), score every pair with it, dedup, filter,
reshard, train briefly on the curated view, write the report, and print how curation did.

This module holds the demo's own stages; ``mmdata.pipeline`` runs them next to the library's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmdata import layout
from mmdata.atomic import atomic_file, write_json, write_parquet
from mmdata.schemas.samples import SUCCESS
from mmdata.schemas.views import FUNNEL_KEY, RULES_KEY, VIEW_SCHEMA

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "demo.yaml"
MODEL_NAME = "mmdata-demo-clip"


# -- the synthetic web ------------------------------------------------------------------------------

def make_corpus(*, corpus: str, samples: int = 2500, seed: int = 0, sites: int = 3,
                min_side: int = 200, max_side: int = 800) -> Path:
    from mmdata.synthetic import SyntheticConfig, generate_corpus

    config = SyntheticConfig(samples=samples, seed=seed, sites=sites, min_side=min_side, max_side=max_side)
    return generate_corpus(corpus, config)


def corpus_complete(*, corpus: str, **_) -> bool:
    return (Path(corpus) / "truth.parquet").exists()


@contextlib.contextmanager
def serve_corpus_stage(*, corpus: str, sites: int = 3, needed_by: str | None = None) -> Iterator[list[str]]:
    """Serve the corpus until the pipeline ends; write its URL table (``urls.parquet``) the first time.

    The URL table names the servers' ports, so a resumed run binds the same ports again.
    ``needed_by``: the download folder; once its manifest exists, the servers are no longer needed.
    """
    from mmdata.serve import serve_corpus
    from mmdata.synthetic import url_table

    corpus = Path(corpus)
    urls_path, ports_path = corpus / "urls.parquet", corpus / "serve.json"
    ports = json.loads(ports_path.read_text())["ports"] if urls_path.exists() and ports_path.exists() else None
    with contextlib.ExitStack() as stack:
        try:
            base_urls = stack.enter_context(serve_corpus(corpus, sites=sites, ports=ports))
        except OSError as error:
            raise RuntimeError(f"cannot bind the corpus's ports {ports}: {error}; free them, or delete "
                               f"{urls_path} and the download folder to start over") from error
        if not urls_path.exists():
            write_json(ports_path, {"ports": [int(url.rsplit(":", 1)[1]) for url in base_urls]})
            with atomic_file(urls_path) as handle:
                pq.write_table(url_table(pq.read_table(corpus / "truth.parquet"), base_urls), handle)
        yield base_urls


def serve_complete(*, corpus: str, needed_by: str | None = None, **_) -> bool:
    return (
        needed_by is not None
        and (Path(corpus) / "urls.parquet").exists()
        and layout.manifest_path(needed_by).exists()
    )


def seed_view(*, dataset: str, corpus: str, view: str = "seed") -> Path:
    """A view of the corpus's seed subset: clean pairs set aside as the filter network's training data
    (the stand-in for a curated high-quality set, as DFN trains on one)."""
    truth = _truth_with_uids(corpus)
    seed_uids = {
        uid for uid, flag in zip(truth.column("uid").to_pylist(), truth.column("seed_subset").to_pylist()) if flag
    }
    samples = _samples(dataset)
    rows = [row for row in samples.select(["key", "uid", "shard", "tar_offset", "tar_size", "status"]).to_pylist()
            if row["uid"] in seed_uids and row["status"] == SUCCESS]
    table = pa.Table.from_pylist(rows).drop_columns(["status"]) if rows else VIEW_SCHEMA.empty_table()
    schema = VIEW_SCHEMA.with_metadata({
        **VIEW_SCHEMA.metadata,
        RULES_KEY: json.dumps({"seed_subset": "clean rows flagged in the corpus's ground truth"}).encode(),
        FUNNEL_KEY: json.dumps({"rows_in": samples.num_rows, "rows_out": len(rows),
                                "steps": [{"rule": "seed_subset", "dropped": samples.num_rows - len(rows)}]}).encode(),
    })
    path = layout.views_dir(dataset) / f"{view}.parquet"
    write_parquet(table, path, schema)
    return path


def seed_view_complete(*, dataset: str, view: str = "seed", **_) -> bool:
    return (layout.views_dir(dataset) / f"{view}.parquet").exists()


# -- the filter network -----------------------------------------------------------------------------

def train_stage(*, dataset: str, output: str, view: str | None = None, steps: int, max_seconds: float | None = None,
                batch_size: int = 64, learning_rate: float = 2e-3, warmup_steps: int = 20, seed: int = 0,
                num_workers: int = 1, threads: int = 1, vision_layers: int = 3, text_layers: int = 2) -> dict:
    """Train a tiny open_clip model with ClipLoss for ``steps`` steps, streaming ``dataset`` (or a view of
    it), with :func:`mmdata.training.train_clip`; write the model config (what ``mmdata score --model``
    takes) and ``output/checkpoint.pt`` (``--pretrained``). ``max_seconds`` may stop it early, with a warning."""
    import open_clip
    import torch

    from mmdata.score.model import tiny_model_config, write_model_config
    from mmdata.stream.dataset import stream
    from mmdata.training import TrainConfig, seed_everything, train_clip

    config = TrainConfig(steps=steps, batch_size=batch_size, learning_rate=learning_rate, warmup_steps=warmup_steps,
                         seed=seed, num_workers=num_workers, threads=threads, max_seconds=max_seconds)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model_config = tiny_model_config(context_length=32, layers=text_layers)
    model_config["vision_cfg"]["layers"] = vision_layers
    config_path = write_model_config(output / f"{MODEL_NAME}.json", model_config)
    open_clip.add_model_config(config_path)
    seed_everything(seed)
    model, preprocess_train, _ = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=None)
    data = stream(dataset, view=view, seed=seed, image_transform=preprocess_train)
    result = train_clip(model, data, open_clip.get_tokenizer(MODEL_NAME), config)
    checkpoint = output / "checkpoint.pt"
    with atomic_file(checkpoint) as handle:
        torch.save(model.state_dict(), handle)
    summary = {**result.summary(), "model": str(config_path), "checkpoint": str(checkpoint)}
    write_json(output / "train.json", summary)
    early = f", STOPPED EARLY by the {max_seconds} s time cap (of {steps} steps)" if result.stopped_early else ""
    print(f"  trained {result.steps} steps ({summary['epochs']} epochs of {len(data)}) in {summary['seconds']} s"
          f"{early}, loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}", flush=True)
    return summary


def train_complete(*, output: str, **_) -> bool:
    return (Path(output) / "checkpoint.pt").exists() and (Path(output) / "train.json").exists()


# -- the scorecard ----------------------------------------------------------------------------------

def evaluate(*, dataset: str, corpus: str, view: str, output: str | None = None) -> dict:
    """Compare curation with the ground truth and print the figures: ROC AUC of clip_score for
    mismatched captions, precision/recall of the view, and recall and precision of each dedup tier."""
    import mmdata

    truth = _truth_with_uids(corpus)
    table = mmdata.read_table(dataset)
    kind_of = dict(zip(truth.column("uid").to_pylist(), truth.column("kind").to_pylist()))
    truth_rows = {uid: row for uid, row in zip(truth.column("uid").to_pylist(), truth.to_pylist())}
    rows = [row for row in table.to_pylist() if row["status"] == SUCCESS]
    report: dict = {"downloaded": len(rows), "statuses": dict(Counter(table.column("status").to_pylist()))}
    report["status_by_kind"] = _status_by_kind(table, kind_of)

    # Captions: held-out pairs only (the seed subset trained the filter network).
    held_out = [row for row in rows if not truth_rows[row["uid"]]["seed_subset"] and row.get("clip_score") is not None]
    labels = np.array([kind_of[row["uid"]] != "mismatched" for row in held_out])
    scores = np.array([row["clip_score"] for row in held_out], dtype=np.float64)
    report["auc_mismatched"] = _roc_auc(scores, labels)
    view_path = layout.views_dir(dataset) / f"{view}.parquet"
    selected = set(pq.read_table(view_path, columns=["key"]).column("key").to_pylist())
    kept = np.array([row["key"] in selected for row in held_out])
    matched = labels
    report["view"] = {
        "name": view,
        "selected": len(selected),
        "kept_precision": _ratio((kept & matched).sum(), kept.sum()),  # of kept pairs, how many are matched
        "kept_recall": _ratio((kept & matched).sum(), matched.sum()),  # of matched pairs, how many are kept
        "mismatched_dropped": _ratio((~kept & ~matched).sum(), (~matched).sum()),  # of mismatched, how many dropped
    }
    report["dedup"] = _dedup_quality(rows, truth_rows) if "duplicate_of" in table.column_names else None
    if report["dedup"] is not None:
        report["dedup"]["semantic_check"] = _semantic_check(dataset)
    print(_scorecard(report), flush=True)
    if output:
        write_json(output, report)
    return report


def _status_by_kind(table: pa.Table, kind_of: dict) -> dict:
    counts: dict[str, Counter] = {}
    for uid, status in zip(table.column("uid").to_pylist(), table.column("status").to_pylist()):
        counts.setdefault(kind_of.get(uid, "unknown"), Counter())[status] += 1
    return {kind: dict(counter) for kind, counter in sorted(counts.items())}


def _dedup_quality(rows: list[dict], truth_rows: dict) -> dict:
    """Recall per planted kind (a planted copy counts as found when it and its original end up with the
    same kept representative) and precision per tier (the flagged pair is truly a duplicate pair)."""
    by_key = {row["key"]: row for row in rows}
    key_of_truth_row = {truth_rows[row["uid"]]["row"]: row["key"] for row in rows}

    def representative(key: str) -> str:
        seen = set()
        while by_key.get(key, {}).get("duplicate_of") and key not in seen:
            seen.add(key)
            key = by_key[key]["duplicate_of"]
        return key

    recall = {}
    for kind in ("exact_dup", "near_dup", "semantic_dup"):
        found = total = 0
        for row in rows:
            truth = truth_rows[row["uid"]]
            if truth["kind"] != kind or truth["duplicate_of"] not in key_of_truth_row:
                continue
            total += 1
            found += representative(row["key"]) == representative(key_of_truth_row[truth["duplicate_of"]])
        recall[kind] = {"found": found, "planted": total, "recall": _ratio(found, total)}
    precision = {}
    for tier in ("exact", "near", "semantic"):
        flagged = [row for row in rows if row.get("dup_reason") == tier and row.get("duplicate_of") in by_key]
        correct = 0
        for row in flagged:
            mine, twin = truth_rows[row["uid"]], truth_rows[by_key[row["duplicate_of"]]["uid"]]
            same_group = mine["dup_group"] is not None and mine["dup_group"] == twin["dup_group"]
            same_scene = (
                tier == "semantic" and mine["description"] is not None and mine["description"] == twin["description"]
            )
            correct += same_group or same_scene
        precision[tier] = {"flagged": len(flagged), "correct": correct, "precision": _ratio(correct, len(flagged))}
    return {"recall": recall, "precision": precision}


def _semantic_check(dataset: str) -> dict | None:
    """The semantic tier's check as the dedup stage recorded it (None: the tier was off)."""
    from mmdata.schemas.annotations import DEDUP_METADATA_KEY

    metadata = pq.read_schema(layout.annotations_dir(dataset) / "dedup.parquet").metadata or {}
    return json.loads(metadata.get(DEDUP_METADATA_KEY, b"{}")).get("semantic_check")


def _roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Probability that a matched pair outscores a mismatched one (Mann-Whitney U, ties count half)."""
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    position = 0
    while position < len(scores):  # average ranks over ties
        end = position
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[position]:
            end += 1
        ranks[order[position:end + 1]] = (position + end) / 2 + 1
        position = end + 1
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def _ratio(numerator, denominator) -> float | None:
    return None if not denominator else round(float(numerator) / float(denominator), 4)


def _scorecard(report: dict) -> str:
    def show(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = ["", "== Curation quality against the ground truth ==",
             f"downloaded {report['downloaded']} pairs; statuses {report['statuses']}",
             "ROC AUC of clip_score, matched vs mismatched captions (held-out pairs): "
             f"{show(report['auc_mismatched'])}"]
    view = report["view"]
    lines.append(f"view {view['name']!r} ({view['selected']} samples): "
                 f"precision of kept pairs {show(view['kept_precision'])}, "
                 f"recall of matched pairs {show(view['kept_recall'])}, "
                 f"mismatched dropped {show(view['mismatched_dropped'])}")
    if report["dedup"]:
        for kind, figures in report["dedup"]["recall"].items():
            lines.append(f"dedup recall for {kind}: {figures['found']}/{figures['planted']} "
                         f"= {show(figures['recall'])}")
        for tier, figures in report["dedup"]["precision"].items():
            lines.append(f"dedup precision of tier {tier}: {figures['correct']}/{figures['flagged']} "
                         f"= {show(figures['precision'])}")
        check = report["dedup"]["semantic_check"]
        if check is not None:
            lines.append(f"semantic tier {'ran' if check['ran'] else 'left off'}; its check: {check['verdict']}")
    return "\n".join(lines)


# -- helpers ----------------------------------------------------------------------------------------

def _truth_with_uids(corpus: str) -> pa.Table:
    """The ground truth with each row's download uid (from the URL table the download read)."""
    corpus = Path(corpus)
    truth = pq.read_table(corpus / "truth.parquet")
    urls = pq.read_table(corpus / "urls.parquet")
    uids = [layout.sample_uid(url, caption) for url, caption in
            zip(urls.column("url").to_pylist(), urls.column("caption").to_pylist())]
    return truth.append_column("uid", pa.array(uids))


def _samples(dataset: str) -> pa.Table:
    tables = []
    for shard in layout.complete_shards(dataset):
        table = pq.read_table(layout.parquet_path(dataset, shard))
        tables.append(table.append_column("shard", pa.array([shard] * table.num_rows, pa.string())))
    if not tables:
        raise FileNotFoundError(f"no complete shard in {dataset}: run the download stage first")
    return pa.concat_tables(tables, promote_options="default")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmdata.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="demo-output", help="where the corpus, datasets and report go")
    parser.add_argument("--samples", type=int, help="rows in the synthetic corpus (default: the pipeline's)")
    parser.add_argument("--train-steps", type=int,
                        help="optimizer steps of the filter network (default: the pipeline's)")
    parser.add_argument("--train-seconds", type=float,
                        help="time cap of the filter network's training: hitting it stops training early, with a "
                             "warning, and the result then depends on the machine's load")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override any other var of pipelines/demo.yaml")
    arguments = parser.parse_args(argv)
    from mmdata.pipeline import PipelineError, parse_overrides, run_pipeline

    overrides = parse_overrides(arguments.assignments)
    overrides["workdir"] = arguments.workdir
    if arguments.samples is not None:
        overrides["samples"] = arguments.samples
    if arguments.train_steps is not None:
        overrides["train_steps"] = arguments.train_steps
    if arguments.train_seconds is not None:
        overrides["train_max_seconds"] = arguments.train_seconds
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    try:
        results = run_pipeline(
            PIPELINE, overrides=overrides,
            resume_command="python -m mmdata.demo " + " ".join(sys.argv[1:] if argv is None else argv),
        )
    except PipelineError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    print("\nseconds per stage: " + ", ".join(f"{r.stage} {r.seconds:.0f}" for r in results if r.status == "ran"))
    trained = [r.result for r in results if r.stage == "train" and r.status == "ran"]
    if trained:
        print("steps trained: " + ", ".join(f"{Path(t['checkpoint']).parent.name} {t['steps']}"
                                            + (" (STOPPED EARLY by its time cap)" if t["stopped_early"] else "")
                                            for t in trained))
    print(f"demo finished in {time.perf_counter() - started:.0f} s; report: {Path(arguments.workdir) / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
