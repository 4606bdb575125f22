"""mmdata.score on Ray actors: outputs, provenance, two models, defaults, img2dataset datasets, CLI."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from score_data import build_dataset, image_bytes, reference_scores

import mmdata
from mmdata import layout
from mmdata.atomic import write_json
from mmdata.cli import main as cli_main
from mmdata.schemas.scores import PROVENANCE_KEY
from mmdata.score.job import score


def test_two_models_provenance_default_and_resume_skip(ray_local, tiny_config, tiny_checkpoint, tmp_path):
    root = tmp_path / "data"
    stored = build_dataset(root, shards=2, per_shard=5, broken=frozenset({"000002"}))
    write_json(layout.manifest_path(root), {"shards": [], "totals": {}})  # as the download job leaves it

    first = mmdata.score(dataset=str(root), model=str(tiny_config), pretrained=str(tiny_checkpoint), batch_size=4,
                         show_progress=False)
    model_a = first["model_id"]
    assert first["counts"] == {"samples": 10, "scored": 9, "failed_undecodable_image": 1, "shards_scored": 2}
    assert first["shards_skipped"] == 0 and first["failures"] == []
    assert first["actors"][0]["device"] in ("cpu", "cuda")

    # the job's scores are open_clip's own
    for shard in ("00000", "00001"):
        table = pq.read_table(root / "scores" / model_a / f"{shard}.parquet")
        expected = reference_scores(tiny_config, tiny_checkpoint, layout.tar_path(root, shard))
        got = dict(zip(table.column("key").to_pylist(), table.column("clip_score").to_pylist()))
        assert {key for key, value in got.items() if value is not None} == set(expected)
        assert max(abs(got[key] - expected[key]) for key in expected) < 0.005
        provenance = json.loads(table.schema.metadata[PROVENANCE_KEY])
        assert provenance["checkpoint_sha256"] == first["provenance"]["checkpoint_sha256"]
        assert provenance["model_config_sha256"] and provenance["image_size"] == [64, 64]
    record = json.loads((root / "scores" / model_a / "model.json").read_text())
    assert record["model_id"] == model_a and record["keep_embeddings"] is True and record["precision"] == "fp32"
    manifest = json.loads(layout.manifest_path(root).read_text())
    assert manifest["totals"] == {} and manifest["scores"]["models"][model_a]["provenance"]["model_id"] == model_a

    # a second model (random weights, no embeddings) keeps the first; the latest is the default
    second = score(dataset=str(root), model=str(tiny_config), batch_size=8, no_embeddings=True, show_progress=False)
    model_b = second["model_id"]
    assert model_b != model_a and sorted(p.name for p in (root / "scores").iterdir()) == sorted([model_a, model_b])
    assert pq.read_table(root / "scores" / model_b / "00000.parquet").column_names == [
        "key", "clip_score", "score_error"
    ]
    table = mmdata.read_table(root)
    assert table.num_rows == 12  # 10 stored + 2 failed downloads
    assert table.column("clip_score").to_pylist() == table.column(f"clip_score__{model_b}").to_pylist()
    score_files = pa.concat_tables(
        [
            pq.read_table(path, columns=["key", "clip_score"])
            for path in sorted((root / "scores" / model_a).glob("*.parquet"))
        ]
    )
    from_files = dict(zip(score_files.column("key").to_pylist(), score_files.column("clip_score").to_pylist()))
    keys = table.column("key").to_pylist()
    assert table.column(f"clip_score__{model_a}").to_pylist() == [from_files.get(key) for key in keys]
    assert set(json.loads(layout.manifest_path(root).read_text())["scores"]["models"]) == {model_a, model_b}

    # re-running the first model scores nothing and, asked to, makes it the default
    again = score(
        dataset=str(root), model=str(tiny_config), pretrained=str(tiny_checkpoint), default=True, show_progress=False
    )
    assert again["shards_skipped"] == 2 and again["counts"] == {} and again["actors"] == []
    table = mmdata.read_table(root, columns=["key", "clip_score", f"clip_score__{model_a}"])
    assert table.column_names == ["key", "clip_score", f"clip_score__{model_a}"]
    assert table.column("clip_score").to_pylist() == table.column(f"clip_score__{model_a}").to_pylist()
    assert json.loads(layout.manifest_path(root).read_text())["scores"]["default"] == model_a

    keys, vectors = mmdata.read_embeddings(root, kind="text")
    assert (
        keys == [key for key in stored if key != "000002"] and vectors.shape == (9, 64) and vectors.dtype == np.float16
    )
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=2e-3)
    with pytest.raises(ValueError, match="no-embeddings"):
        mmdata.read_embeddings(root, model=model_b)
    with pytest.raises(ValueError, match="no-embeddings setting"):
        score(dataset=str(root), model=str(tiny_config), pretrained=str(tiny_checkpoint), no_embeddings=True)


def _write_img2dataset_shard(root, shard: int, rows: list[dict]) -> None:
    """The files img2dataset's webdataset writer leaves: tar of {key}.jpg/.txt/.json, a parquet with
    its own columns only, and {shard}_stats.json."""
    name = layout.shard_name(shard)
    with tarfile.open(root / f"{name}.tar", "w") as archive:
        for row in rows:
            if row["status"] != "success":
                continue
            for extension, payload in (("jpg", row["jpg"]), ("txt", row["caption"].encode()),
                                       ("json", json.dumps({k: row[k] for k in ("key", "url", "caption")}).encode())):
                info = tarfile.TarInfo(f"{row['key']}.{extension}")
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    columns = ("url", "caption", "key", "status", "error_message", "width", "height", "original_width",
               "original_height", "exif", "sha256")
    table = pa.table({column: [row.get(column) for row in rows] for column in columns})
    table = table.set_column(table.schema.get_field_index("width"), "width", table.column("width").cast(pa.int64()))
    pq.write_table(table, root / f"{name}.parquet")
    (root / f"{name}_stats.json").write_text(
        json.dumps({"count": len(rows), "successes": sum(r["status"] == "success" for r in rows)})
    )


def test_img2dataset_layout_scores_and_reads(ray_local, tiny_config, tiny_checkpoint, tmp_path, capsys):
    root = tmp_path / "i2d"
    root.mkdir()
    rows = []
    for index in range(5):
        key = f"00000{index:04d}"
        ok = index != 3
        rows.append({"key": key, "url": f"http://127.0.0.1/{index}.jpg", "caption": f"photo {index}",
                     "status": "success" if ok else "failed_to_download", "error_message": None if ok else "404",
                     "width": 64 if ok else None, "jpg": image_bytes((index * 40, 90, 200), (64, 64), seed=index)})
    _write_img2dataset_shard(root, 0, rows)

    code = cli_main(["score", str(root), "--model", str(tiny_config), "--pretrained", str(tiny_checkpoint),
                     "--batch-size", "3", "--precision", "bf16", "--quiet"])
    assert code == 0
    assert "4 samples scored, 0 failed" in capsys.readouterr().out
    record = json.loads(next((root / "scores").glob("*/model.json")).read_text())
    assert record["precision"] == ("bf16" if record["device"] == "cuda" else "fp32")  # no half precision on CPU
    output = tmp_path / "joined.parquet"
    assert cli_main(["table", str(root), "-o", str(output)]) == 0
    table = pq.read_table(output)
    assert table.column("key").to_pylist() == [row["key"] for row in rows]
    assert table.column("tar_offset").null_count == 5  # img2dataset has no member index
    assert table.column("uid").null_count == 0 and "exif" in table.column_names
    assert table.schema.field("width").type == pa.int32()
    scores = table.column("clip_score").to_pylist()
    assert [score is None for score in scores] == [False, False, False, True, False]
    expected = reference_scores(tiny_config, tiny_checkpoint, root / "00000.tar")
    assert max(abs(scores[i] - expected[rows[i]["key"]]) for i in (0, 1, 2, 4)) < 0.005


def test_user_errors_stop_before_any_work(ray_local, tiny_config, tmp_path, capsys):
    root = tmp_path / "data"
    build_dataset(root, shards=1, per_shard=2)
    assert cli_main(["score", str(root), "--model", "ViT-Q-99"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert cli_main(["score", str(root), "--model", str(tiny_config), "--pretrained", str(tmp_path / "gone.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["score", str(tmp_path / "nowhere"), "--model", str(tiny_config)]) == 2
    assert cli_main(["score", str(root), "--model", str(tiny_config), "--batch-size", "0"]) == 2
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="GPU"):
            score(dataset=str(root), model=str(tiny_config), device="cuda")
    assert not (root / "scores").exists() or not any((root / "scores").rglob("*.parquet"))


@pytest.mark.parametrize(
    ("options", "cpus", "gpus", "expected"),
    [
        ({"device": "cpu"}, 2, 0, (1, 2, 0.0)),
        ({"device": "auto"}, 16, 0, (1, 16, 0.0)),
        ({"device": "auto", "actors": 3}, 16, 0, (3, 5, 0.0)),
        ({"device": "auto"}, 16, 8, (8, 2, 1.0)),  # 2 CPUs per GPU: one actor each
        ({"device": "auto"}, 16, 1, (4, 4, 0.25)),  # one H100 with 16 cores: 4 actors share it
        ({"device": "cuda"}, 8, 2, (2, 4, 1.0)),
        ({"device": "cuda", "actors": 2}, 16, 1, (2, 8, 0.5)),
        ({"device": "cuda", "gpus_per_actor": 0.5}, 16, 2, (4, 4, 0.5)),
        ({"device": "cuda", "actors": 1, "gpus_per_actor": 1, "cpus_per_actor": 3}, 16, 1, (1, 3, 1.0)),
        ({"device": "cpu", "actors": 12}, 16, 0, (8, 2, 0.0)),  # never more actors than shards to score
    ],
)
def test_actor_plan_grid(options, cpus, gpus, expected, tmp_path):
    from mmdata.score.config import ScoreConfig
    from mmdata.score.job import plan_actors

    plan = plan_actors(ScoreConfig(dataset=str(tmp_path), model="ViT-B-32", **options), 8, cpus, gpus)
    assert (plan.actors, plan.num_cpus, plan.num_gpus) == expected
    assert plan.actors * plan.num_cpus <= cpus and plan.actors * plan.num_gpus <= gpus


@pytest.mark.parametrize(
    ("options", "cpus", "gpus", "message"),
    [
        ({"device": "cuda"}, 16, 0, "no GPU"),
        ({"device": "cuda", "actors": 3, "gpus_per_actor": 1}, 16, 2, "GPU"),
        ({"device": "cpu", "actors": 2, "cpus_per_actor": 2}, 2, 0, "CPUs"),
    ],
)
def test_actor_plan_refuses_what_the_cluster_cannot_hold(options, cpus, gpus, message, tmp_path):
    from mmdata.score.config import ScoreConfig
    from mmdata.score.job import plan_actors

    with pytest.raises(ValueError, match=message):
        plan_actors(ScoreConfig(dataset=str(tmp_path), model="ViT-B-32", **options), 8, cpus, gpus)
