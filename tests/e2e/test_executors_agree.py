"""The same loop (download, score, dedup, filter, reshard) on each executor writes the same data."""

import json
from pathlib import Path

import pyarrow.parquet as pq
from loop_input import loop_input

import mmdata
from mmdata.execution import EXECUTORS
from mmdata.score.model import tiny_model_config, write_model_config

# Fields of a stats file that time the run rather than describe its data.
_TIMING = {"duration", "start_time", "end_time"}


def _run_loop(folder: Path, urls: Path, model: Path, executor: str) -> Path:
    execution = dict(executor=executor, workers=2)
    data = folder / "data"
    mmdata.download(input=str(urls), output_dir=str(data), shard_size=8, image_size=32, timeout=10, retries=0,
                    threads=4, allow_network=["127.0.0.1/32"], **execution)
    mmdata.score(dataset=str(data), model=str(model), batch_size=8, show_progress=False, **execution)
    mmdata.dedup(data, exact=True, near=True, **execution)
    mmdata.filter_view(data, view="kept", drop_duplicates=True)
    mmdata.reshard(data, view="kept", output=folder / "resharded", shard_size=5, **execution)
    return folder


def _contents(folder: Path) -> dict[str, object]:
    """Every data file under ``folder`` by relative path: tables as Python rows, JSON without timings."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if not path.is_file() or path.suffix not in (".parquet", ".tar", ".json"):
            continue
        if path.suffix == ".parquet":
            found[name] = pq.read_table(path).to_pylist()
        elif path.suffix == ".tar":
            found[name] = path.read_bytes()
        else:
            found[name] = _without_timing(json.loads(path.read_text()))
    return found


def _without_timing(value):
    if isinstance(value, dict):
        return {key: _without_timing(item) for key, item in value.items()
                if key not in _TIMING and key not in ("last_run", "last_run_seconds", "scored_at", "created", "source",
                                                      "output_dir", "options", "seconds")}
    if isinstance(value, list):
        return [_without_timing(item) for item in value]
    return value


def test_every_executor_writes_the_same_datasets(server, ray_local, tmp_path):
    urls = loop_input(server, tmp_path, "agree")
    model = write_model_config(tmp_path / "models" / "tiny.json", tiny_model_config())
    contents = {executor: _contents(_run_loop(tmp_path / executor, urls, model, executor)) for executor in EXECUTORS}
    reference = contents["ray"]
    assert any(name.startswith("data/scores/") for name in reference), sorted(reference)
    assert "data/annotations/dedup.parquet" in reference and "resharded/00000.tar" in reference
    dedup = reference["data/annotations/dedup.parquet"]
    assert sum(row["dup_reason"] == "exact" for row in dedup) == 1  # the planted copy
    for executor in EXECUTORS:
        assert sorted(contents[executor]) == sorted(reference), executor
        for name, value in reference.items():
            assert contents[executor][name] == value, f"{executor}: {name} differs from the ray executor's"
