"""Index, search and report on s3:// (moto on 127.0.0.1) give what they give on the local copy of the
same dataset; a remote index is downloaded once into the local cache, and rebuilt only on change."""

import shutil

import pytest

import mmdata
from mmdata import layout
from mmdata.cli import main
from mmdata.search import index as search_index
from mmdata.storage import location, read_parquet, write_parquet_bytes


def _upload(local, url: str) -> None:
    """Every file of the local dataset folder ``local`` (its index left out), at the same names under ``url``."""
    for path in sorted(local.rglob("*")):
        relative = path.relative_to(local)
        if path.is_file() and relative.parts[0] != search_index.INDEX_DIR:
            staged = path.with_name(f".{path.name}.upload")
            shutil.copy(path, staged)
            location(f"{url}/{relative.as_posix()}").put_file(staged)
            staged.unlink()


def _hits(root, **query) -> list[tuple]:
    return [(hit.key, round(hit.similarity, 5), hit.caption, hit.shard, hit.url, hit.tar_offset, hit.tar_size)
            for hit in mmdata.search(root, k=5, **query)]


def _index_reads(s3) -> int:
    return sum(method == "GET" and search_index.INDEX_DIR in path and "index.faiss" in path
               for method, path in s3.proxy.log)


def test_index_and_search_on_s3_match_the_local_copy(shapes_dataset, s3, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("MMDATA_CACHE", str(tmp_path / "cache"))
    local, remote = tmp_path / "data", f"{s3_bucket}/ds"
    shutil.copytree(shapes_dataset.root, local, ignore=shutil.ignore_patterns("index"))
    _upload(local, remote)

    built = mmdata.build_index(remote, executor="processes", workers=2)
    assert built.rebuilt and built.count == len(shapes_dataset.captions)
    assert built.folder.url.startswith(f"{s3_bucket}/ds/index/")
    assert sorted(built.version_dir.names()) == ["index.faiss", "plan.json", "rows.parquet", "vectors.npy"]
    assert not mmdata.build_index(remote).rebuilt  # the fingerprint of the remote files is stable
    local_built = mmdata.build_index(local, executor="inline")
    assert read_parquet(built.version_dir / "rows.parquet").equals(
        read_parquet(local_built.version_dir / "rows.parquet"))

    key = sorted(shapes_dataset.captions)[7]
    for query in ({"key": key}, {"text": "a green star"}):
        assert _hits(remote, **query) == _hits(local, **query)
    assert _hits(remote, key=key)[0][0] == key

    # Downloaded once: a fresh process state (nothing loaded) finds the cached copy and fetches nothing.
    reads = _index_reads(s3)
    assert reads >= 1
    search_index._LOADED.clear()
    assert _hits(remote, key=key) == _hits(local, key=key)
    assert _index_reads(s3) == reads
    assert len(list((tmp_path / "cache" / search_index.INDEX_DIR).iterdir())) == 1

    # A changed score table rebuilds the remote index; the old version is removed from the bucket.
    score_file = layout.score_path(remote, built.model_id, "00001")
    table = read_parquet(score_file)
    score_file.write_bytes(write_parquet_bytes(table.slice(1)))
    rebuilt = mmdata.build_index(remote, executor="inline")
    assert rebuilt.rebuilt and rebuilt.count == built.count - 1
    assert [name for name, entry in rebuilt.folder.list().items() if entry["type"] == "directory"] == [
        rebuilt.version]


def test_cli_search_html_on_s3(shapes_dataset, s3_bucket, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MMDATA_CACHE", str(tmp_path / "cache"))
    local, remote = tmp_path / "data", f"{s3_bucket}/ds"
    shutil.copytree(shapes_dataset.root, local, ignore=shutil.ignore_patterns("index"))
    _upload(local, remote)
    options = ["--storage-options", '{"use_ssl": false}']
    assert main(["index", remote, "--executor", "inline", *options]) == 0
    assert f"{remote}/index/" in capsys.readouterr().out
    page = f"{s3_bucket}/pages/hits.html"
    assert main(["search", remote, "--text", "a red circle", "-k", "3", "--html", page, *options]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if "shard" in line]) == 3
    html = location(page).read_text()
    assert html.count("data:image/png;base64,") == 3 and "a red circle" in html


@pytest.mark.parametrize("report_on_s3", [False, True])
def test_report_on_s3_shows_what_the_local_report_shows(shapes_dataset, s3_bucket, tmp_path, report_on_s3):
    local, remote = tmp_path / "data", f"{s3_bucket}/ds"
    shutil.copytree(shapes_dataset.root, local, ignore=shutil.ignore_patterns("index"))
    scores = sorted(mmdata.read_table(local).column("clip_score").to_pylist())
    mmdata.filter_view(local, view="kept", min_clip_score=scores[len(scores) // 2])
    _upload(local, remote)

    local_page = mmdata.write_report(local, tmp_path / "local.html", view="kept").read_text()
    target = f"{s3_bucket}/reports/s3.html" if report_on_s3 else tmp_path / "s3.html"
    written = mmdata.write_report(remote, target, view="kept")
    assert written == (location(target) if report_on_s3 else target)
    remote_page = location(target).read_text()
    thumbnails = local_page.count("data:image/jpeg;base64,")
    assert thumbnails >= 2  # the threshold grids show samples on both sides of the cut-off
    assert remote_page.count("data:image/jpeg;base64,") == thumbnails
    assert remote_page.count("<img") == local_page.count("<img")
    assert f"Curation report: {remote}" in remote_page
