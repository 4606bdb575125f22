"""Where files live: local paths only for the stages (URLs refused, never taken as a folder name),
and shards listed in number order."""

from pathlib import Path

import pytest

from mmdata import layout
from mmdata.cli import main


@pytest.mark.parametrize("url", ["s3://bucket/ds", "gs://bucket/ds", "https://host/ds", "hf://datasets/x"])
def test_a_url_is_refused_with_a_clear_error(url):
    with pytest.raises(ValueError, match="is a URL: this command reads and writes local folders"):
        layout.tar_path(url, 0)


def test_local_paths_and_file_urls_are_accepted(tmp_path):
    assert layout.local_path(f"file://{tmp_path}") == tmp_path
    assert layout.manifest_path(tmp_path) == tmp_path / "manifest.json"
    assert layout.local_path("relative/data") == Path("relative/data")


@pytest.mark.parametrize("arguments", [
    ["download", "urls.parquet", "--output", "s3://bucket/ds"],
    ["download", "s3://bucket/urls.parquet", "--output", "out"],
    ["score", "s3://bucket/ds", "--model", "ViT-B-32"],
    ["dedup", "s3://bucket/ds"],
    ["filter", "s3://bucket/ds", "--view", "v"],
    ["reshard", "data", "--view", "v", "--output", "s3://bucket/out"],
    ["table", "s3://bucket/ds", "-o", "all.parquet"],
    ["stats", "s3://bucket/ds"],
])
def test_commands_refuse_urls_and_write_nothing(tmp_path, monkeypatch, capsys, arguments):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "urls.parquet").write_bytes(b"")
    assert main(arguments) == 2
    assert "is a URL" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["urls.parquet"]  # no folder named s3:


def test_complete_shards_are_listed_in_number_order(tmp_path):
    for name in ("100000", "99999", "00002", "100001", "00010"):
        layout.stats_path(tmp_path, name).write_text("{}")
    assert layout.complete_shards(tmp_path) == ["00002", "00010", "99999", "100000", "100001"]
