"""Checks of a dataset on an object store, shared by the object-storage tests: every object under a
prefix, a local mirror (so tests/download/download_checks.py's ``check_dataset`` applies), only data
left, and committed shards whose objects match what their stats recorded."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from mmdata.storage import location

DATA_NAME = re.compile(r"^(\d+)(\.tar|\.parquet|_stats\.json)$")


def store_files(url: str) -> dict[str, dict]:
    """``{relative name: {"size", "etag"}}`` of every object under ``url`` (recursively, hidden ones too)."""
    root = location(url)
    root.fs.invalidate_cache()
    found = root.fs.find(root.path, detail=True)
    return {name[len(root.path) + 1:]: {"size": int(info.get("size") or 0),
                                        "etag": (info.get("ETag") or "").strip('"') or None}
            for name, info in found.items() if name.startswith(root.path + "/")}


def mirror(url: str, destination: Path) -> Path:
    """Copy every object under ``url`` to the local folder ``destination`` (same relative names)."""
    root = location(url)
    for name in store_files(url):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((root / name).read_bytes())
    return destination


def assert_only_data(url: str, *, manifest: bool = True) -> list[str]:
    """Only shards (tar, parquet, stats, all three for each) and the manifest: no attempts, claims,
    locks or temporaries. Returns the shard names."""
    names = sorted(store_files(url))
    stray = [name for name in names if not DATA_NAME.match(name) and name != "manifest.json"]
    assert not stray, f"left beside the data: {stray}"
    assert ("manifest.json" in names) == manifest, names
    shards = sorted({DATA_NAME.match(name).group(1) for name in names if DATA_NAME.match(name)})
    for shard in shards:
        assert {f"{shard}.tar", f"{shard}.parquet", f"{shard}_stats.json"} <= set(names), f"shard {shard} not whole"
    return shards


def assert_committed_shards_whole(url: str) -> list[str]:
    """Every shard whose stats exist has its tar and parquet, of the size and ETag its stats name.
    Returns the committed shard names."""
    files = store_files(url)
    root = location(url)
    committed = sorted(name[:-len("_stats.json")] for name in files if re.match(r"^\d+_stats\.json$", name))
    for shard in committed:
        stats = (root / f"{shard}_stats.json").read_json()
        objects = stats.get("objects")
        assert objects and set(objects) == {f"{shard}.tar", f"{shard}.parquet"}, stats
        for name, recorded in objects.items():
            assert name in files, f"{shard}: stats name {name}, which is missing"
            assert files[name] == recorded, f"{name}: store has {files[name]}, stats recorded {recorded}"
    return committed


def attempts_uploaded(proxy, bucket_path: str, shard: str) -> set[str]:
    """The attempt ids whose tar was uploaded for ``shard`` under ``bucket_path``, from the proxy's log."""
    pattern = re.compile(rf"^/{re.escape(bucket_path)}/\.attempts/{shard}\.([0-9a-f]+)\.tar(\?|$)")
    return {match.group(1) for method, path in list(proxy.log) if method == "PUT" and (match := pattern.match(path))}


def run_result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def wait_for(condition, timeout: float = 120.0, what: str = "the condition", process=None) -> None:
    """Poll ``condition`` until it holds; fail if ``process`` ends first or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the child exited {process.returncode} before {what}: {(err or '')[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


PYTHON = sys.executable
