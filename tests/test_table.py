"""read_table / read_embeddings / iter_embeddings over hand-written score and annotation tables (no model, no Ray)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmdata
from mmdata import layout
from mmdata.atomic import write_parquet
from mmdata.cli import main as cli_main
from mmdata.schemas.annotations import CONTAMINATION_SCHEMA, DEDUP_SCHEMA
from mmdata.schemas.scores import score_schema
from mmdata.score import store
from mmdata.shard_output import shard_output
from mmdata.table import iter_embeddings


def _dataset(root, shards=2, per_shard=3) -> list[str]:
    """Shards of per_shard stored samples plus one failed row each; returns every key in order."""
    keys = []
    for shard in range(shards):
        with shard_output(root, shard) as output:
            for row in range(per_shard + 1):
                key = layout.sample_key(shard, row, 10)
                keys.append(key)
                if row == per_shard:
                    output.add({"key": key, "uid": key, "status": "failed_to_download", "error_message": "404",
                                "source_id": row})
                else:
                    output.add({"key": key, "uid": key, "status": "success", "caption": f"c{key}", "source_id": row},
                               {"jpg": b"x", "txt": b"c"})
            output.commit({"shard": layout.shard_name(shard)})
    return keys


def _scores(
    root, model_id: str, scored: dict[str, float], *, dim: int | None = 4, scored_at: str, shards=("00000", "00001")
):
    """Score tables for ``model_id`` as mmdata score writes them (only the given shards)."""
    for shard in shards:
        keys = [key for key in scored if key.startswith(shard)]
        columns = {"key": keys, "clip_score": [scored[key] for key in keys]}
        if dim is not None:
            vectors = [list(np.eye(dim, dtype=np.float16)[index % dim]) for index in range(len(keys))]
            columns["image_embedding"] = columns["text_embedding"] = vectors
        schema = score_schema(dim, {"model_id": model_id})
        write_parquet(pa.table(columns), layout.score_path(root, model_id, shard), schema)
    store.write_model_record(root, model_id, {"model_id": model_id, "embed_dim": dim,
                                              "keep_embeddings": dim is not None, "scored_at": scored_at})


def test_joins_metadata_scores_and_annotations_in_row_order(tmp_path):
    keys = _dataset(tmp_path)
    stored = [key for key in keys if not key.endswith("3")]
    _scores(tmp_path, "old", {key: 0.1 + i / 100 for i, key in enumerate(stored)}, scored_at="2026-01-01T00:00:00")
    _scores(tmp_path, "new", {key: 0.5 for key in stored if key.startswith("00000")}, scored_at="2026-02-01T00:00:00",
            dim=None, shards=("00000",))
    annotations = layout.annotations_dir(tmp_path)
    # annotation rows in another order than the metadata, one for a key the dataset does not have
    write_parquet(pa.table({"key": [stored[2], stored[0], "999999"], "duplicate_of": [stored[0], None, "x"],
                            "dup_reason": ["near", None, "exact"], "dup_similarity": [0.97, None, 1.0]}),
                  annotations / "dedup.parquet", DEDUP_SCHEMA)
    write_parquet(pa.table({"key": [stored[1]], "contaminated": [True], "contaminated_by": ["eval/3.png"],
                            "contamination_reason": ["exact"]}),
                  annotations / "contamination.parquet", CONTAMINATION_SCHEMA)
    (tmp_path / "00002.parquet").write_bytes((tmp_path / "00000.parquet").read_bytes())  # no stats: incomplete, ignored

    table = mmdata.read_table(tmp_path)
    assert table.column("key").to_pylist() == keys
    assert table.column("shard").to_pylist() == ["00000"] * 4 + ["00001"] * 4
    assert table.column("source_id").to_pylist() == [0, 1, 2, 3] * 2  # saved input columns kept
    assert table.column_names[-10:] == [
        "shard", "clip_score", "clip_score__new", "clip_score__old",  # models: the latest first
        "contaminated", "contaminated_by", "contamination_reason", "duplicate_of", "dup_reason", "dup_similarity",
    ]
    by_key = {row["key"]: row for row in table.to_pylist()}
    # the latest scored model is the default; its missing shard and failed rows are null
    assert by_key[stored[0]]["clip_score"] == pytest.approx(0.5) and by_key[stored[3]]["clip_score"] is None
    assert by_key[stored[3]]["clip_score__old"] == pytest.approx(0.13)
    assert by_key[keys[3]]["clip_score__old"] is None  # a failed download has no score
    assert by_key[stored[2]]["duplicate_of"] == stored[0] and by_key[stored[2]]["dup_reason"] == "near"
    assert by_key[stored[0]]["duplicate_of"] is None and by_key[stored[4]]["dup_reason"] is None
    assert by_key[stored[1]]["contaminated"] is True and by_key[stored[0]]["contaminated"] is None
    assert "999999" not in by_key

    store.set_default_model(tmp_path, "old")
    chosen = mmdata.read_table(tmp_path, columns=["clip_score", "key"])
    assert chosen.column_names == ["clip_score", "key"]
    assert chosen.column("clip_score").to_pylist() == table.column("clip_score__old").to_pylist()
    with pytest.raises(ValueError, match="unknown columns"):
        mmdata.read_table(tmp_path, columns=["key", "aesthetic"])


def test_only_needed_columns_are_read(tmp_path):
    keys = _dataset(tmp_path, shards=1)
    _scores(tmp_path, "m", {key: 0.2 for key in keys[:3]}, scored_at="2026-01-01T00:00:00", shards=("00000",))
    table = mmdata.read_table(tmp_path, columns=["key", "uid", "clip_score__m"])
    assert table.schema.names == ["key", "uid", "clip_score__m"]
    values = table.column("clip_score__m").to_pylist()
    assert values[:3] == pytest.approx([0.2] * 3) and values[3] is None


def test_embeddings_and_their_errors(tmp_path):
    keys = _dataset(tmp_path)
    stored = [key for key in keys if not key.endswith("3")]
    _scores(tmp_path, "m", {key: 0.3 for key in stored}, scored_at="2026-01-01T00:00:00")
    names, vectors = mmdata.read_embeddings(tmp_path, kind="image")
    assert names == stored and vectors.dtype == np.float16 and vectors.shape == (6, 4)  # as stored
    assert np.array_equal(vectors[1], [0, 1, 0, 0])
    with pytest.raises(ValueError, match="kind"):
        mmdata.read_embeddings(tmp_path, kind="audio")
    with pytest.raises(ValueError, match="run mmdata score"):
        mmdata.read_embeddings(tmp_path, model="other")
    _scores(tmp_path, "lean", {key: 0.3 for key in stored}, dim=None, scored_at="2026-03-01T00:00:00")
    with pytest.raises(ValueError, match="no-embeddings"):
        mmdata.read_embeddings(tmp_path)


def test_iter_embeddings_per_shard_without_nulls(tmp_path):
    keys = _dataset(tmp_path)
    stored = [key for key in keys if not key.endswith("3")]
    _scores(tmp_path, "m", {key: 0.3 for key in stored}, scored_at="2026-01-01T00:00:00")
    path = layout.score_path(tmp_path, "m", "00001")
    table = pq.read_table(path.path)
    nulled = pa.FixedSizeListArray.from_arrays(table.column("image_embedding").combine_chunks().values, 4,
                                               mask=pa.array([False, True, False]))
    write_parquet(table.set_column(3, "image_embedding", nulled), path, table.schema)
    shards = list(iter_embeddings(tmp_path))
    assert [shard_keys.to_pylist() for shard_keys, _ in shards] == [stored[:3], [stored[3], stored[5]]]
    assert all(vectors.dtype == np.float16 and vectors.shape[1] == 4 for _, vectors in shards)
    assert np.array_equal(shards[1][1], np.eye(4, dtype=np.float16)[[0, 2]])
    assert [len(k) for k, _ in iter_embeddings(tmp_path, shards=["00001"])] == [2]
    names, vectors = mmdata.read_embeddings(tmp_path)
    assert names == stored[:4] + stored[5:] and np.array_equal(vectors, np.concatenate([v for _, v in shards]))
    with pytest.raises(ValueError, match="kind"):
        iter_embeddings(tmp_path, kind="audio")  # at the call, before any shard is read


def test_unscored_dataset_and_cli(tmp_path, capsys):
    keys = _dataset(tmp_path, shards=1)
    table = mmdata.read_table(tmp_path)
    assert table.column("key").to_pylist() == keys and "clip_score" not in table.column_names
    output = tmp_path / "out" / "table.parquet"
    assert cli_main(["table", str(tmp_path), "-o", str(output), "--columns", "key,status"]) == 0
    assert pq.read_table(output).column_names == ["key", "status"]
    assert "4 rows" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert mmdata.read_table(empty).num_rows == 0 and "shard" in mmdata.read_table(empty).column_names
    with pytest.raises(FileNotFoundError):
        mmdata.read_table(tmp_path / "absent")


@pytest.mark.parametrize("shuffled", [False, True])
def test_the_table_a_shard_at_a_time_is_the_in_memory_table(tmp_path, monkeypatch, shuffled):
    """Extra input columns in every other shard, two models, annotation tables in many row groups (in shard
    order, or shuffled): `mmdata table` writes, and read_table returns, exactly the in-memory join; so
    they do with one cached row group and row groups of 5 rows."""
    from metadata_corpus import CorpusSpec, in_memory_table, write_corpus

    import mmdata.atomic
    from mmdata import table as table_module

    root = tmp_path / "data"
    write_corpus(root, CorpusSpec(rows=5_000, shard_size=800, seed=2, models=("m1", "m2"), extra_column=True,
                                  group_rows=600, shuffle_annotations=shuffled))
    expected = in_memory_table(root)
    written = table_module.write_table(root, tmp_path / "table.parquet")
    assert written.rows == expected.num_rows and written.columns == expected.column_names
    assert pq.read_table(tmp_path / "table.parquet").equals(expected)
    assert mmdata.read_table(root).equals(expected)
    picked = ["dup_reason", "clip_score__m1", "source_id", "key", "caption_language"]
    assert mmdata.read_table(root, columns=picked).equals(expected.select(picked))

    monkeypatch.setattr(table_module, "CACHED_GROUPS", 1)
    monkeypatch.setattr(mmdata.atomic, "GROUP_ROWS", 5)
    table_module.write_table(root, tmp_path / "tight.parquet", ["key", "duplicate_of", "laplacian_variance"])
    tight = pq.ParquetFile(tmp_path / "tight.parquet")
    assert tight.metadata.num_row_groups == 1_000
    assert tight.read().equals(expected.select(["key", "duplicate_of", "laplacian_variance"]))
