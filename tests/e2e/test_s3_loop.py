"""The whole loop on s3:// (moto on 127.0.0.1) gives what it gives on a local folder: download → score →
dedup → filter (a view) → reshard (s3 → s3) → stream (2 ranks × 2 DataLoader workers) → index and
search → report. Each step's outputs are compared with the same step on a local folder."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from loop_input import loop_input

import mmdata
from mmdata import layout
from mmdata.score.model import tiny_model_config, write_model_config
from mmdata.storage import location, read_parquet

pytestmark = pytest.mark.slow

EXECUTION = dict(executor="processes", workers=2)
# Fields of stats and records that time the run or say where it ran, rather than describe its data.
_RUN_FIELDS = {"duration", "start_time", "end_time", "attempt", "generation", "objects", "last_run",
               "last_run_seconds", "scored_at", "created", "source", "output_dir", "options", "seconds", "root",
               "dataset"}


def _keys_collate(items):
    return [item["key"] for item in items]


def _streamed_keys(root: str, view: str | None) -> list[list[str]]:
    """The keys each of 2 ranks reads through a DataLoader of 2 workers, for one epoch."""
    per_rank = []
    for rank in range(2):
        dataset = mmdata.stream(root, view=view, rank=rank, world_size=2, decode=None, seed=3)
        loader = dataset.loader(batch_size=2, num_workers=2, collate_fn=_keys_collate)
        per_rank.append([key for batch in loader for key in batch])
    return per_rank


def _without_run_fields(value):
    if isinstance(value, dict):
        return {key: _without_run_fields(item) for key, item in value.items() if key not in _RUN_FIELDS}
    if isinstance(value, list):
        return [_without_run_fields(item) for item in value]
    return value


def _shards(root: str) -> dict[str, dict]:
    found = {}
    for name in layout.complete_shards(root):
        found[name] = {"rows": read_parquet(layout.parquet_path(root, name)).to_pylist(),
                       "tar": layout.tar_path(root, name).read_bytes(),
                       "stats": _without_run_fields(layout.stats_path(root, name).read_json())}
    return found


class Loop:
    """Runs the steps in order; a failing step is recorded (with its error) and the steps after it
    that need its output are skipped, so one run reports every step that does not work yet."""

    def __init__(self):
        self.results: dict[str, object] = {}
        self.errors: dict[str, str] = {}

    def step(self, name: str, function, *needs: str):
        missing = [need for need in needs if need not in self.results]
        if missing:
            self.errors[name] = f"skipped: needs {missing}"
            return None
        try:
            self.results[name] = function()
        except Exception as error:  # noqa: BLE001 - reported by the test
            frames = traceback.extract_tb(error.__traceback__)
            where = next((f"{frame.filename.split('/mmdata/')[-1]}:{frame.lineno}" for frame in reversed(frames)
                          if "/mmdata/" in frame.filename and "/tests/" not in frame.filename), "?")
            lines = str(error).strip().splitlines() or [""]
            message = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"  # a worker's error: its last line
            self.errors[name] = f"{type(error).__name__} at {where}: {message[:300]}"
            return None
        return self.results[name]


def run_loop(data: str, resharded: str, urls: Path, model: Path, report: Path) -> Loop:
    loop = Loop()
    loop.step("download", lambda: mmdata.download(
        input=str(urls), output_dir=data, shard_size=8, image_size=32, timeout=10, retries=0, threads=4,
        allow_network=["127.0.0.1/32"], **EXECUTION))
    loop.step("download-shards", lambda: _shards(data), "download")
    loop.step("score", lambda: mmdata.score(dataset=data, model=str(model), batch_size=8, show_progress=False,
                                            **EXECUTION), "download")
    loop.step("table", lambda: mmdata.read_table(data).to_pylist(), "score")
    loop.step("dedup", lambda: mmdata.dedup(data, exact=True, near=True, **EXECUTION), "download")
    loop.step("dedup-annotations", lambda: read_parquet(layout.annotations_dir(data) / "dedup.parquet").to_pylist(),
              "dedup")
    loop.step("filter", lambda: mmdata.filter_view(data, view="kept", drop_duplicates=True).column("key").to_pylist(),
              "dedup")
    loop.step("view", lambda: mmdata.read_view(data, "kept").column("key").to_pylist(), "filter")
    loop.step("reshard", lambda: mmdata.reshard(data, view="kept", output=resharded, shard_size=5, **EXECUTION),
              "filter")
    loop.step("reshard-shards", lambda: _shards(resharded), "reshard")
    loop.step("stream-all", lambda: _streamed_keys(data, None), "download")
    loop.step("stream-view", lambda: _streamed_keys(data, "kept"), "filter")
    loop.step("stream-resharded", lambda: _streamed_keys(resharded, None), "reshard")
    loop.step("index", lambda: mmdata.build_index(data, **EXECUTION), "score")
    loop.step("search", lambda: [(hit.key, round(hit.similarity, 4))
                                 for hit in mmdata.search(data, key=loop.results["view"][0], k=5)], "index", "view")
    loop.step("report", lambda: mmdata.write_report(data, report, view="kept"), "filter", "score")
    return loop


def test_the_loop_on_s3_matches_the_loop_on_a_local_folder(s3, s3_bucket, server, tmp_path):
    urls = loop_input(server, tmp_path, "s3loop")
    model = write_model_config(tmp_path / "models" / "tiny.json", tiny_model_config())
    local = run_loop(str(tmp_path / "local" / "data"), str(tmp_path / "local" / "resharded"), urls, model,
                     tmp_path / "local-report.html")
    remote = run_loop(f"{s3_bucket}/data", f"{s3_bucket}/resharded", urls, model, tmp_path / "s3-report.html")
    both = [name for name in remote.results if name in local.results]

    # Same data at every step that ran in both loops (so a partial run still checks what it can).
    differing = [name for name in ("download-shards", "table", "dedup-annotations", "filter", "view",
                                   "reshard-shards", "stream-all", "stream-view", "search")
                 if name in both and remote.results[name] != local.results[name]]
    failures = [f"  local {name}: {error}" for name, error in local.errors.items()]
    failures += [f"  s3 {name}: {error}" for name, error in remote.errors.items()]
    failures += [f"  {name}: the s3 loop's output differs from the local loop's" for name in differing]
    assert not failures, "the loop is not the same on s3:// and locally:\n" + "\n".join(failures)

    assert sum(row["dup_reason"] == "exact" for row in local.results["dedup-annotations"]) == 1
    view = local.results["view"]
    assert remote.results["filter"] == view and 0 < len(view) < 23
    stored = [row["key"] for shard in local.results["download-shards"].values() for row in shard["rows"]
              if row["status"] == "success"]
    for loop in (local, remote):
        assert sorted(key for rank in loop.results["stream-all"] for key in rank) == sorted(stored)
        streamed = loop.results["stream-view"]
        assert sorted(key for rank in streamed for key in rank) == sorted(view), "every key of the view once"
        resharded = [key for rank in loop.results["stream-resharded"] for key in rank]
        assert len(resharded) == len(set(resharded)) == len(view)
    assert len(local.results["search"]) == 5
    assert Path(remote.results["report"]).read_text().count("<img") == Path(local.results["report"]).read_text().count(
        "<img")
    assert location(f"{s3_bucket}/data/manifest.json").exists()
