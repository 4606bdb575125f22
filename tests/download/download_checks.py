"""Shared by the download job tests: writing an input table in each format, and checking a dataset
folder against the rows that went in (every row once, every success stored once, readable tars,
stats that add up, no temporaries)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import webdataset as wds

from mmdata import layout
from mmdata.storage.location import TEMP_SUFFIX


def write_input(rows: list[dict], folder: Path, input_format: str) -> Path:
    """Write ``rows`` (url, caption, extras) as a parquet, csv (with header) or tsv (with header) file."""
    table = pa.Table.from_pylist(rows)
    path = folder / f"urls.{input_format}"
    if input_format == "parquet":
        pq.write_table(table, path)
    elif input_format == "csv":
        pa_csv.write_csv(table, path)
    elif input_format == "tsv":
        lines = ["\t".join(table.column_names)]
        lines += ["\t".join("" if value is None else str(value) for value in row.values()) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        raise ValueError(input_format)
    return path


def read_metadata(root: Path) -> pa.Table:
    """Every shard's parquet, concatenated in shard order."""
    tables = [pq.read_table(path) for path in sorted(root.glob("*.parquet"))]
    return pa.concat_tables(tables, promote_options="permissive")


def tar_samples(root: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every tar, read with webdataset; a key seen twice fails the check."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar in sorted(root.glob("*.tar")):
        for sample in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False):
            key = sample["__key__"]
            assert key not in samples, f"{key} is stored twice"
            samples[key] = {name: value for name, value in sample.items() if not name.startswith("__")}
    return samples


def check_dataset(root: Path, input_rows: list[dict], shard_size: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """Assert the folder holds exactly ``input_rows``; returns (metadata row by key, tar sample by key)."""
    metadata = read_metadata(root).to_pylist()
    by_key = {row["key"]: row for row in metadata}
    assert len(by_key) == len(metadata) == len(input_rows), "every input row exactly once"
    for index, given in enumerate(input_rows):
        key = layout.sample_key(index // shard_size, index % shard_size, shard_size)
        row = by_key[key]
        assert (row["url"], row["caption"]) == (given["url"], given["caption"]), key
        assert row["uid"] == layout.sample_uid(given["url"], given["caption"])

    samples = tar_samples(root)
    stored = {key for key, row in by_key.items() if row["status"] == "success"}
    assert set(samples) == stored, "exactly the successes are in the tars"
    for key in stored:
        row, members = by_key[key], samples[key]
        assert row["error_message"] is None and row["sha256"] and row["width"] and row["height"]
        assert set(members) == {row["image_format"], "txt", "json"} - ({"txt"} if row["caption"] is None else set())
        if row["caption"] is not None:
            assert members["txt"].decode("utf-8") == row["caption"]
        assert json.loads(members["json"])["key"] == key
    for key, row in by_key.items():
        if row["status"] != "success":
            assert row["error_message"], f"{key} failed without a message"

    stats = [json.loads(path.read_text()) for path in sorted(root.glob("*_stats.json"))]
    assert len(stats) == len(list(root.glob("*.tar"))) == len(list(root.glob("*.parquet")))
    assert sum(entry["count"] for entry in stats) == len(input_rows)
    for entry in stats:
        assert entry["count"] == entry["successes"] + entry["failed_to_download"] + entry["failed_to_resize"]
        assert sum(entry["status_dict"].values()) == entry["count"]
    status_totals = Counter()
    for entry in stats:
        status_totals.update(entry["status_dict"])
    assert status_totals == Counter(row["status"] for row in metadata)
    assert not [path for path in root.iterdir() if path.name.endswith(TEMP_SUFFIX)], "temporaries left"
    return by_key, samples
