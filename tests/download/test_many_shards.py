"""More than 100,000 shards (img2dataset's ``oom_shard_count`` case): a job over 100,001 one-row shards
names them with 6 digits, keys their rows to match, lists them in number order (99999 before 100000)
and resumes a run that stopped short of the last shards by writing those only.

The dataset is metadata-only: the earlier run's shards are their stats files (what planning and
resuming read); the rows are invalid URLs, so the resumed shards need no network."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

import mmdata
from mmdata import layout
from mmdata.download.config import DownloadConfig
from mmdata.stats import shard_stats

SHARDS = 100_001
LEFT_OVER = ("099999", "100000")  # the earlier run stopped here: the last 5-digit name and the first 6-digit one


def test_a_job_of_more_than_100000_shards_plans_keys_and_resumes(tmp_path):
    source = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [f"ftp://127.0.0.1/{index}.jpg" for index in range(SHARDS)],
                             "caption": [f"c{index}" for index in range(SHARDS)]}), source)
    output = tmp_path / "data"
    options = dict(input=str(source), output_dir=str(output), shard_size=1)
    config = DownloadConfig.from_options(**options, shard_digits=layout.shard_digits_for(SHARDS))
    assert config.shard_digits == 6

    # The earlier run: every shard but the last two committed (stats written as the worker writes them).
    output.mkdir()
    template = shard_stats(pa.table({"status": ["invalid_url"], "error_class": ["bad_scheme"],
                                     "byte_count": pa.array([None], pa.int64())}), shard="x", duration=0.0,
                           start_time=0.0)
    template["config_fingerprint"] = config.fingerprint()
    for shard in range(SHARDS):
        name = layout.shard_name(shard, 6)
        if name not in LEFT_OVER:
            (output / f"{name}_stats.json").write_text(json.dumps({**template, "shard": name}))
    earlier = (output / "000007_stats.json").read_text()

    manifest = mmdata.download(**options, executor="inline")

    names = [entry["shard"] for entry in manifest["shards"]]
    assert len(names) == SHARDS and names[0] == "000000" and names[-1] == "100000"
    assert names[99_998:] == ["099998", "099999", "100000"], "listed in number order"
    assert layout.complete_shards(output) == names
    assert manifest["last_run"]["samples"] == len(LEFT_OVER), "only the shards left over were downloaded"
    assert (output / "000007_stats.json").read_text() == earlier, "a complete shard is not rewritten"
    for name in LEFT_OVER:
        rows = pq.read_table(output / f"{name}.parquet").to_pylist()
        assert [row["key"] for row in rows] == [f"{name}0"]  # 6-digit shard + 1-digit row, as img2dataset keys
        assert rows[0]["url"] == f"ftp://127.0.0.1/{int(name)}.jpg" and rows[0]["status"] == "invalid_url"
    assert manifest["totals"]["count"] == SHARDS
    assert not [path.name for path in output.iterdir() if path.name.startswith(".")], "no lock or temporary left"
