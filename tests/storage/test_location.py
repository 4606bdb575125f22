"""Location on a local folder and on a real S3 server (moto on 127.0.0.1): whole-or-nothing writes,
exclusive creates (also between processes), uncached listings, batch reads, server-side copies,
tree removal, and URLs (``file://`` is local, an unknown protocol is refused by name)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time

import pytest

from mmdata.storage import location
from mmdata.storage.location import _local_entry, read_all


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """An empty dataset folder: a local path, or a prefix of a fresh bucket."""
    if request.param == "local":
        return location(tmp_path / "root")
    bucket = request.getfixturevalue("s3_bucket")
    return location(f"{bucket}/root")


def run_child(code: str, *arguments: str, timeout: float = 120) -> str:
    """Run ``code`` in a fresh Python process (the test's environment, so the same store)."""
    done = subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_writer_that_fails_leaves_nothing(root):
    target = root / "shard.tar"
    with pytest.raises(RuntimeError, match="disk full, say"):
        with target.writer() as handle:
            handle.write(b"half of a file" * 1000)
            raise RuntimeError("disk full, say")
    assert not target.exists()
    assert root.list() == {}, "no partial object and no temporary left under the folder"
    with target.writer() as handle:
        handle.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert root.names() == ["shard.tar"]


def test_a_failed_rewrite_keeps_the_old_contents(root):
    target = root / "stats.json"
    target.write_json({"count": 1})
    with pytest.raises(ValueError):
        with target.writer("w") as handle:
            handle.write('{"count": ')
            raise ValueError("interrupted")
    assert target.read_json() == {"count": 1}
    assert root.names() == ["stats.json"]


def test_create_is_exclusive(root):
    claim = root / ".attempts" / "00000.g0.json"
    assert claim.create(b"first")
    assert not claim.create(b"second")
    assert claim.read_bytes() == b"first"
    claim.remove()
    assert not claim.exists()
    assert claim.create(b"third"), "a removed name is free again"
    assert claim.read_bytes() == b"third"


def test_create_between_processes_has_exactly_one_winner(root):
    """Four processes create the same name at once: one wins, and the object holds its bytes."""
    claim = root / "claim.json"
    code = ("import sys\nfrom mmdata.storage import location\n"
            "won = location(sys.argv[1]).create(sys.argv[2].encode())\nprint('WON' if won else 'LOST')")
    children = [subprocess.Popen([sys.executable, "-c", code, claim.url, f"writer-{index}"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for index in range(4)]
    results = []
    for index, child in enumerate(children):
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-3000:]
        results.append((out.strip(), f"writer-{index}"))
    winners = [name for verdict, name in results if verdict == "WON"]
    assert len(winners) == 1, results
    assert claim.read_bytes() == winners[0].encode()


def test_listings_are_not_cached(root):
    """What another process writes or deletes is seen at once, by list, names and exists."""
    (root / "a.parquet").write_bytes(b"a")
    assert root.names() == ["a.parquet"]
    assert not (root / "b.parquet").exists()
    run_child("import sys\nfrom mmdata.storage import location\nlocation(sys.argv[1]).write_bytes(b'bb')",
              (root / "b.parquet").url)
    assert root.names() == ["a.parquet", "b.parquet"]
    assert (root / "b.parquet").exists() and (root / "b.parquet").info()["size"] == 2
    assert root.names(".parquet") == ["a.parquet", "b.parquet"]
    run_child("import sys\nfrom mmdata.storage import location\nlocation(sys.argv[1]).remove()",
              (root / "a.parquet").url)
    assert root.names() == ["b.parquet"]
    assert not (root / "a.parquet").exists()


def test_list_names_folders_and_files(root):
    (root / "00000.tar").write_bytes(b"x" * 10)
    (root / "scores" / "m1" / "00000.parquet").write_bytes(b"y")
    listing = root.list()
    assert set(listing) == {"00000.tar", "scores"}
    assert listing["00000.tar"]["type"] == "file" and listing["00000.tar"]["size"] == 10
    assert listing["scores"]["type"] == "directory"
    assert root.names() == ["00000.tar"]
    assert (root / "scores").is_dir() and not (root / "00000.tar").is_dir() and (root / "00000.tar").is_file()
    assert (root / "nowhere").list() == {} and not (root / "nowhere").is_dir()


def test_a_local_entry_gone_between_the_listing_and_its_size_is_left_out(tmp_path):
    """Another process renames its temporaries while a folder is listed (a job's progress poll saw it)."""
    (tmp_path / ".00012.parquet.tmp").write_bytes(b"x")
    (tmp_path / "00011.parquet").write_bytes(b"yy")
    entries = {entry.name: entry for entry in os.scandir(tmp_path)}
    (tmp_path / ".00012.parquet.tmp").unlink()
    assert _local_entry(entries[".00012.parquet.tmp"]) is None
    assert _local_entry(entries["00011.parquet"]) == {"type": "file", "size": 2}


def test_read_all_reads_in_order_and_names_a_missing_file(root):
    files = [root / f"{index:05d}_stats.json" for index in range(6)]
    for index, file in enumerate(files):
        file.write_json({"shard": index})
    data = read_all(list(reversed(files)))
    assert data == [file.read_bytes() for file in reversed(files)]
    assert [json.loads(item)["shard"] for item in data] == [5, 4, 3, 2, 1, 0]
    with pytest.raises(FileNotFoundError, match="00099_stats.json"):
        read_all([files[0], root / "00099_stats.json"])
    assert read_all([]) == []


def test_read_range_and_info(root):
    target = root / "00000.tar"
    payload = bytes(range(256)) * 40
    target.write_bytes(payload)
    assert target.read_range(1000, 300) == payload[1000:1300]
    info = target.info()
    assert info["size"] == len(payload)
    if root.is_local:
        assert info["etag"] is None
    else:
        assert info["etag"] and info["etag"] == root.list()["00000.tar"]["etag"]
    with target.open() as handle:
        handle.seek(5000)
        assert handle.read(10) == payload[5000:5010]
    with pytest.raises(ValueError, match="reads"):
        target.open("wb")


def test_copy_to_copies_and_keeps_the_source(root):
    source = root / ".attempts" / "00000.abc.tar"
    payload = os.urandom(300_000)
    source.write_bytes(payload)
    target = root / "00000.tar"
    source.copy_to(target)
    assert target.read_bytes() == payload and source.read_bytes() == payload
    assert target.info()["size"] == len(payload)
    if not root.is_local:
        assert target.info()["etag"] == source.info()["etag"], "a server-side copy keeps the object's ETag"


def test_remove_tree_removes_everything_under_it_and_only_that(root):
    for name in ("a.tar", "b/c.parquet", "b/d/e.json"):
        (root / ".attempts" / name).write_bytes(b"x")
    (root / "00000.tar").write_bytes(b"keep")
    (root / ".attempts").remove_tree()
    assert not (root / ".attempts").exists() and (root / ".attempts").list() == {}
    assert root.names() == ["00000.tar"] and set(root.list()) == {"00000.tar"}
    (root / ".attempts").remove_tree()  # absent: nothing to do, no error
    (root / "00000.tar").remove()
    (root / "00000.tar").remove()  # absent: no error


def test_a_missing_object_fails_at_once_not_after_retries(root, monkeypatch):
    monkeypatch.setenv("MMDATA_STORAGE_RETRY_SECONDS", "30")
    started = time.monotonic()
    with pytest.raises(FileNotFoundError):
        (root / "missing.json").read_bytes()
    with pytest.raises(FileNotFoundError):
        (root / "missing.json").info()
    assert time.monotonic() - started < 10, "a missing object is not a store failure to retry"


def test_a_location_pickles_and_reads_the_same_store(root):
    target = root / "manifest.json"
    target.write_json({"shards": []})
    copy = pickle.loads(pickle.dumps(target))
    assert copy == target and copy.url == target.url
    assert copy.read_json() == {"shards": []}
    assert run_child("import pickle, sys\nprint(pickle.loads(bytes.fromhex(sys.argv[1])).read_text())",
                     pickle.dumps(target).hex()).strip() == '{\n  "shards": []\n}'


def test_urls_name_their_place(root, tmp_path):
    if root.is_local:
        assert root.url == str(tmp_path / "root") and root.local_path() == tmp_path / "root"
        assert os.fspath(root) == str(tmp_path / "root")
    else:
        assert root.url.startswith("s3://test-") and root.url.endswith("/root")
        assert location(root.url) == root
        with pytest.raises(ValueError, match="not on the local disk"):
            root.local_path()
        with pytest.raises(TypeError, match="not on the local disk"):
            os.fspath(root)
    assert (root / "a" / "b.json").name == "b.json" and (root / "a" / "b.json").parent == root / "a"
    assert location(root) is root


def test_file_urls_are_local(tmp_path):
    found = location(f"file://{tmp_path}/data")
    assert found.is_local and found.path == str(tmp_path / "data")
    (found / "x.json").write_json({"a": 1})
    assert (tmp_path / "data" / "x.json").is_file()
    assert location(tmp_path / "data") == found


def test_an_unknown_protocol_is_refused_by_name():
    with pytest.raises(ValueError, match=r"nosuch://x.*Protocol not known: nosuch"):
        location("nosuch://x")


def test_a_protocol_whose_filesystem_is_not_installed_says_what_to_install():
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401
        pytest.skip("gcsfs is installed here")
    except ImportError:
        pass
    with pytest.raises(ValueError, match=r"no filesystem for gs:// is installed \(pip install 'mmdata\[gcs\]'\)"):
        location("gs://bucket/ds")

