"""Where files live: local paths and ``file://`` URLs on the disk, fsspec URLs on their filesystem, a
URL of an unknown protocol refused by name (never taken as a folder name), shards in number order."""

import pytest

from mmdata import layout
from mmdata.cli import main


def test_local_paths_and_file_urls_are_local(tmp_path):
    assert layout.dataset(f"file://{tmp_path}").local_path() == tmp_path
    assert layout.manifest_path(tmp_path).local_path() == tmp_path / "manifest.json"
    assert layout.dataset("relative/data").url == "relative/data"


def test_an_fsspec_url_names_its_place_on_its_filesystem():
    shard = layout.tar_path("s3://bucket/ds", 7)
    assert not shard.is_local and shard.url == "s3://bucket/ds/00007.tar"
    assert layout.tar_path("memory://ds", 7).url == "memory:///ds/00007.tar"  # fsspec roots memory paths at /


def test_a_url_of_an_unknown_protocol_is_refused_by_name():
    with pytest.raises(ValueError, match="nosuch"):
        layout.tar_path("nosuch://bucket/ds", 0)


@pytest.mark.parametrize("arguments", [
    ["download", "urls.parquet", "--output", "nosuch://bucket/ds"],
    ["download", "nosuch://bucket/urls.parquet", "--output", "out"],
    ["score", "nosuch://bucket/ds", "--model", "ViT-B-32"],
    ["dedup", "nosuch://bucket/ds"],
    ["filter", "nosuch://bucket/ds", "--view", "v"],
    ["table", "nosuch://bucket/ds", "-o", "all.parquet"],
    ["stats", "nosuch://bucket/ds"],
])
def test_commands_refuse_unknown_protocols_and_write_nothing(tmp_path, monkeypatch, capsys, arguments):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "urls.parquet").write_bytes(b"")
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "Traceback" not in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["urls.parquet"]  # no folder named nosuch:


def test_shard_names_widen_only_when_needed():
    assert layout.shard_digits_for(100_000) == 5 and layout.shard_digits_for(100_001) == 6
    assert layout.shard_name(3, layout.shard_digits_for(2_000_000, 8)) == "00000003"
    with pytest.raises(ValueError, match="cannot name"):
        layout.shard_digits_for(100_001, 5)


def test_complete_shards_are_listed_in_number_order(tmp_path):
    for name in ("100000", "99999", "00002", "100001", "00010"):
        layout.stats_path(tmp_path, name).write_text("{}")
    assert layout.complete_shards(tmp_path) == ["00002", "00010", "99999", "100000", "100001"]
