"""``mmdata score`` on an s3:// dataset (moto on 127.0.0.1) writes the scores and embeddings it writes
for the same dataset on a local folder, with --storage-options passed to the filesystem."""

import numpy as np
from score_data import build_dataset

import mmdata
from mmdata import layout
from mmdata.cli import main
from mmdata.storage import location, read_parquet
from mmdata.table import read_embeddings


def test_score_cli_on_s3_matches_a_local_folder(s3_bucket, tiny_config, tiny_checkpoint, tmp_path, capsys):
    local, remote = tmp_path / "data", f"{s3_bucket}/data"
    stored = build_dataset(local, shards=2, per_shard=5, broken=frozenset({"000003"}))
    assert build_dataset(remote, shards=2, per_shard=5, broken=frozenset({"000003"})) == stored
    common = ["--model", str(tiny_config), "--pretrained", str(tiny_checkpoint), "--batch-size", "4", "--quiet",
              "--executor", "inline"]
    assert main(["score", str(local), *common]) == 0
    assert main(["score", remote, *common, "--storage-options", '{"use_ssl": false}']) == 0
    assert f"-> {remote}/scores/" in capsys.readouterr().out

    local_table, remote_table = mmdata.read_table(local), mmdata.read_table(remote)
    assert remote_table.column("key").to_pylist() == local_table.column("key").to_pylist()
    model_id = layout.scored_models(remote)[0]
    failed = []
    for root in (local, remote):
        tables = [read_parquet(layout.score_path(root, model_id, shard)) for shard in ("00000", "00001")]
        failed.append([(key, error.split(":")[0]) for table in tables for key, error in
                       zip(table.column("key").to_pylist(), table.column("score_error").to_pylist()) if error])
    assert failed[1] == failed[0] and [key for key, _ in failed[0]] == ["000003"]
    local_scores = np.array(local_table.column("clip_score").to_pylist(), dtype=float)
    remote_scores = np.array(remote_table.column("clip_score").to_pylist(), dtype=float)
    assert np.isnan(local_scores).sum() == 3  # two failed downloads and one undecodable image
    np.testing.assert_allclose(remote_scores, local_scores, atol=1e-5, equal_nan=True)
    local_keys, local_vectors = read_embeddings(local, "image")
    remote_keys, remote_vectors = read_embeddings(remote, "image")
    assert remote_keys == local_keys and len(local_keys) == len(stored) - 1
    np.testing.assert_allclose(remote_vectors.astype(np.float32), local_vectors.astype(np.float32), atol=1e-3)

    assert sorted(layout.model_dir(remote, model_id).names()) == ["00000.parquet", "00001.parquet", "model.json"]
    assert main(["score", remote, *common]) == 0  # a re-run finds every shard scored
    assert "0 shard(s) scored, 2 already done" in capsys.readouterr().out

    # `mmdata table` reads the scored dataset on the bucket and writes its table there too.
    output = f"{s3_bucket}/tables/joined.parquet"
    assert main(["table", remote, "-o", output, "--columns", "key,clip_score", "--storage-options", "{}"]) == 0
    assert f"{len(local_table)} rows, 2 columns -> {output}" in capsys.readouterr().out
    joined = read_parquet(location(output))
    assert joined.column("key").to_pylist() == local_table.column("key").to_pylist()
    np.testing.assert_allclose(np.array(joined.column("clip_score").to_pylist(), dtype=float), local_scores,
                               atol=1e-5, equal_nan=True)
