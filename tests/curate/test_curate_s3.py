"""Curation on s3:// (moto on 127.0.0.1): dedup → filter → view → reshard (s3 → s3) and decontaminate give
what they give on a local folder, and a finished reshard leaves no writer's objects behind."""

import numpy as np
from curate_corpus import build_corpus, scene_embeddings, write_dataset

from mmdata import layout
from mmdata.cli import main as cli_main
from mmdata.curate.decontaminate import decontaminate
from mmdata.curate.dedup import dedup
from mmdata.curate.reshard import reshard
from mmdata.curate.view import filter_view, read_view
from mmdata.storage import location, read_parquet
from mmdata.table import read_embeddings, read_table

# Fields of stats and plans that say when, where or by which attempt a shard was written.
_RUN_FIELDS = {"duration", "start_time", "end_time", "attempt", "generation", "objects", "last_run_seconds", "source"}
_CORPUS = build_corpus(4, seed=9)  # 44 images with planted exact and near duplicates


def _write(root) -> None:
    rng = np.random.default_rng(3)
    scores = [float(value) for value in rng.uniform(0.0, 0.4, len(_CORPUS))]
    write_dataset(root, _CORPUS, shard_size=16, scores=scores, embeddings=scene_embeddings(_CORPUS), failures_every=7)


def _without_run_fields(value: dict) -> dict:
    return {name: item for name, item in value.items() if name not in _RUN_FIELDS}


def _shards(root) -> dict:
    return {name: {"rows": read_parquet(layout.parquet_path(root, name)).to_pylist(),
                   "tar": layout.tar_path(root, name).read_bytes(),
                   "stats": _without_run_fields(layout.stats_path(root, name).read_json())}
            for name in layout.complete_shards(root)}


def _curate(root, output, *, dedup_cli: list[str] | None = None) -> dict:
    if dedup_cli is None:
        dedup(root, exact=True, near=True, executor="inline")
    else:
        assert cli_main(["dedup", str(root), "--exact", "--near", "--executor", "inline", *dedup_cli]) == 0
    view = filter_view(root, view="kept", drop_duplicates=True)
    manifest = reshard(root, view="kept", output=output, shard_size=6, executor="processes", workers=2)
    keys, vectors = read_embeddings(output, "image")
    return {
        "dedup": read_parquet(layout.annotations_dir(root) / "dedup.parquet").to_pylist(),
        "filter": view.to_pylist(),
        "view": read_view(root, "kept").to_pylist(),
        "manifest": {**_without_run_fields(manifest), "stats": _without_run_fields(manifest["stats"])},
        "shards": _shards(output),
        "table": read_table(output).to_pylist(),
        "embeddings": (keys, vectors.tolist()),
    }


def test_curation_on_s3_matches_a_local_folder(s3_bucket, tmp_path):
    local, remote = tmp_path / "data", f"{s3_bucket}/data"
    _write(local)
    _write(remote)
    on_disk = _curate(local, tmp_path / "resharded")
    on_s3 = _curate(remote, f"{s3_bucket}/resharded", dedup_cli=["--storage-options", '{"use_listings_cache": false}'])

    assert sum(row["dup_reason"] is not None for row in on_disk["dedup"]) > 0
    assert 0 < len(on_disk["view"]) < len(_CORPUS)
    assert len(on_disk["shards"]) == -(-len(on_disk["view"]) // 6) and on_disk["table"]
    differing = [step for step in on_disk if on_s3[step] != on_disk[step]]
    assert not differing, f"on s3 these steps differ from a local folder: {differing}"

    resharded = location(f"{s3_bucket}/resharded")
    stored = [path.split("/resharded/", 1)[1] for path in resharded.fs.find(resharded.path)]
    assert not [name for name in stored if name.startswith((".locks/", ".attempts/"))], stored
    assert "manifest.json" in stored and "reshard.json" in stored


def test_decontaminate_against_an_s3_folder_matches_a_local_one(s3_bucket, tmp_path):
    items = _CORPUS[:11]  # one scene: its original and every duplicate kind
    local, remote = tmp_path / "data", f"{s3_bucket}/data"
    write_dataset(local, items, shard_size=8)
    write_dataset(remote, items, shard_size=8)
    evaluation = {"copy.jpg": items[0].image, "nested/again.jpg": items[0].image, "notes.txt": b"not an image"}
    for name, blob in evaluation.items():
        (tmp_path / "eval" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "eval" / name).write_bytes(blob)
        location(f"{s3_bucket}/eval/{name}").write_bytes(blob)

    on_disk = decontaminate(local, against=tmp_path / "eval", embedding=False, executor="inline")
    assert cli_main(["decontaminate", remote, "--against", f"{s3_bucket}/eval", "--no-embedding",
                     "--executor", "inline", "--storage-options", "{}"]) == 0
    on_s3 = read_parquet(layout.annotations_dir(remote) / "contamination.parquet")
    assert on_disk.counts["eval_images"] == 2 and on_disk.counts["exact"] >= 1
    assert on_s3.to_pylist() == on_disk.table.to_pylist()
