"""The shard commit protocol (mmdata/storage/commit.py) with real processes on a real S3 server:
two writers of one shard publish exactly one attempt; a zombie writer of a killed run that finishes
after the re-run changes nothing; an orphaned claim is finished by the next writer instead of being
redone; and a finished dataset, local or on S3, holds only data."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from download_checks import check_dataset, write_input
from s3_checks import (
    PYTHON,
    assert_committed_shards_whole,
    assert_only_data,
    attempts_uploaded,
    mirror,
    run_result,
    store_files,
    wait_for,
)

import mmdata
from mmdata import layout
from mmdata.storage import location
from mmdata.storage.commit import ATTEMPTS_FOLDER, shard_writer
from mmdata.storage.locks import LOCK_FOLDER

CHILD = Path(__file__).resolve().parent / "shard_child.py"
SHARD_SIZE = 4


def gated_rows(server, gate: str, count: int) -> list[dict]:
    return [{"url": server.url(f"/gate/{gate}/img-{index}.jpg?w=40&h=30"), "caption": f"caption {index}"}
            for index in range(count)]


def plain_rows(server, count: int) -> list[dict]:
    run = uuid.uuid4().hex[:8]
    return [{"url": server.url(f"/img/commit-{run}-{index}.jpg?w=40&h=30"), "caption": f"caption {index}"}
            for index in range(count)]


def job_options(source: Path, output: str) -> dict:
    return dict(input=str(source), output_dir=output, shard_size=SHARD_SIZE, image_size=32, timeout=60.0, retries=0,
                threads=1, allow_network=["127.0.0.1/32"])


def start_writer(tmp_path: Path, options: dict, shard: int) -> subprocess.Popen:
    spec = tmp_path / f"writer-{uuid.uuid4().hex[:8]}.json"
    spec.write_text(json.dumps({"options": options, "shard": shard}))
    return subprocess.Popen([PYTHON, str(CHILD), str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 180) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"writer exited {process.returncode}: {err[-3000:]}"
    return run_result(out)


def bucket_path(url: str) -> str:
    return url[len("s3://"):]


def test_two_writers_of_one_shard_publish_exactly_one_attempt(s3, s3_bucket, http_server, tmp_path):
    gate_name = uuid.uuid4().hex[:8]
    rows = gated_rows(http_server, gate_name, SHARD_SIZE)
    output = f"{s3_bucket}/ds"
    options = job_options(write_input(rows, tmp_path, "parquet"), output)
    gate = http_server.gate(gate_name, hold=2)
    writers = [start_writer(tmp_path, options, 0) for _ in range(2)]
    # Both are past their "already committed?" check and fetching their first row: they will race to commit.
    wait_for(lambda: gate.waiting == 2, what="both writers fetching", process=writers[0])
    gate.release()
    results = [finish(writer) for writer in writers]

    stats = (location(output) / "00000_stats.json").read_json()
    uploaded = attempts_uploaded(s3.proxy, bucket_path(output), "00000")
    assert len(uploaded) == 2, f"each writer uploads its own attempt: {uploaded}"
    assert stats["attempt"] in uploaded and stats["generation"] == 0
    assert [result["attempt"] for result in results] == [stats["attempt"]] * 2, "both return the committed stats"
    loser = (uploaded - {stats["attempt"]}).pop()
    files = store_files(output)
    assert not [name for name in files if loser in name], f"the loser's objects are left: {sorted(files)}"
    assert sorted(name for name in files if name.startswith(ATTEMPTS_FOLDER)) == [f"{ATTEMPTS_FOLDER}/00000.g0.json"]
    assert assert_committed_shards_whole(output) == ["00000"]
    assert stats["objects"]["00000.tar"] == files["00000.tar"]
    check_dataset(mirror(output, tmp_path / "mirror"), rows, SHARD_SIZE)


def test_a_zombie_writer_finishing_after_the_rerun_changes_nothing(s3, s3_bucket, http_server, tmp_path):
    gate_name = uuid.uuid4().hex[:8]
    rows = gated_rows(http_server, gate_name, 2 * SHARD_SIZE)
    output = f"{s3_bucket}/ds"
    options = job_options(write_input(rows, tmp_path, "parquet"), output)
    gate = http_server.gate(gate_name, hold=1)
    zombie = start_writer(tmp_path, options, 0)
    wait_for(lambda: gate.waiting == 1, what="the zombie mid-download", process=zombie)

    manifest = mmdata.download(**options, executor="inline")  # the re-run: its row 0 passes the gate
    assert [shard["count"] for shard in manifest["shards"]] == [SHARD_SIZE, SHARD_SIZE]
    assert zombie.poll() is None, "the zombie is still writing"
    root = location(output)
    committed = (root / "00000_stats.json").read_json()
    tar_bytes = (root / "00000.tar").read_bytes()
    before = store_files(output)
    assert assert_only_data(output) == ["00000", "00001"]

    gate.release()
    result = finish(zombie)
    assert result["attempt"] == committed["attempt"], "the zombie returns the re-run's stats, not its own"
    uploaded = attempts_uploaded(s3.proxy, bucket_path(output), "00000")
    assert len(uploaded) == 2 and committed["attempt"] in uploaded, f"the zombie uploaded its attempt: {uploaded}"

    assert (root / "00000_stats.json").read_json() == committed
    assert (root / "00000.tar").read_bytes() == tar_bytes
    assert store_files(output) == before, "same objects, same sizes and ETags"
    assert assert_only_data(output) == ["00000", "00001"]
    assert assert_committed_shards_whole(output) == ["00000", "00001"]
    check_dataset(mirror(output, tmp_path / "mirror"), rows, SHARD_SIZE)


def test_an_orphan_claim_is_finished_by_the_next_writer_not_redone(s3_bucket, http_server, tmp_path):
    """A writer that died after claiming its shard and before finalising it: its objects and claim are
    there, the shard's names are not. The next run publishes that attempt once, without refetching."""
    rows = plain_rows(http_server, 2 * SHARD_SIZE)
    source = write_input(rows, tmp_path, "parquet")
    scratch = tmp_path / "scratch"
    mmdata.download(**job_options(source, str(scratch)), executor="inline")  # the dead writer's work
    output = f"{s3_bucket}/ds"
    root = location(output)
    orphan = "0123456789ab"
    attempts = root / ATTEMPTS_FOLDER
    (attempts / f"00000.{orphan}.tar").write_bytes((scratch / "00000.tar").read_bytes())
    (attempts / f"00000.{orphan}.parquet").write_bytes((scratch / "00000.parquet").read_bytes())
    scratch_stats = json.loads((scratch / "00000_stats.json").read_text())
    assert (attempts / "00000.g0.json").create(json.dumps(
        {"attempt": orphan, "generation": 0, "stats": scratch_stats}).encode())
    hits_before = [len(http_server.hits(row["url"])) for row in rows]

    mmdata.download(**job_options(source, output), executor="inline")

    stats = (root / "00000_stats.json").read_json()
    assert stats["attempt"] == orphan and stats["generation"] == 0
    assert {key: stats[key] for key in scratch_stats} == scratch_stats
    assert (root / "00000.tar").read_bytes() == (scratch / "00000.tar").read_bytes()
    hits_after = [len(http_server.hits(row["url"])) for row in rows]
    assert hits_after[:SHARD_SIZE] == hits_before[:SHARD_SIZE], "shard 0 was published, not fetched again"
    assert all(after == before + 1 for before, after in zip(hits_before[SHARD_SIZE:], hits_after[SHARD_SIZE:]))
    assert assert_only_data(output) == ["00000", "00001"]
    assert assert_committed_shards_whole(output) == ["00000", "00001"]
    check_dataset(mirror(output, tmp_path / "mirror"), rows, SHARD_SIZE)


def test_shard_writer_finishes_an_orphan_claim_before_giving_a_slot(s3_bucket, tmp_path):
    root = location(f"{s3_bucket}/direct")
    attempts = root / ATTEMPTS_FOLDER
    (attempts / "00003.aaaaaaaaaaaa.tar").write_bytes(b"tar bytes")
    (attempts / "00003.aaaaaaaaaaaa.parquet").write_bytes(b"parquet bytes")
    assert (attempts / "00003.g0.json").create(json.dumps(
        {"attempt": "aaaaaaaaaaaa", "generation": 0, "stats": {"shard": "00003", "count": 1}}).encode())
    with shard_writer(root, "00003") as slot:
        committed = slot.committed_stats()
    assert committed["attempt"] == "aaaaaaaaaaaa" and committed["count"] == 1
    assert (root / "00003.tar").read_bytes() == b"tar bytes"
    assert (root / "00003.parquet").read_bytes() == b"parquet bytes"
    assert attempts.names() == ["00003.g0.json"], "the attempt objects are gone once published"
    assert committed["objects"]["00003.tar"]["size"] == len(b"tar bytes")
    # A claim whose objects are not all there (its writer died before claiming... or they were
    # cleaned) is not finalised: the next writer takes the next generation.
    (attempts / "00004.bbbbbbbbbbbb.tar").write_bytes(b"only the tar")
    assert (attempts / "00004.g0.json").create(json.dumps(
        {"attempt": "bbbbbbbbbbbb", "generation": 0, "stats": {"shard": "00004", "count": 1}}).encode())
    with shard_writer(root, "00004") as slot:
        assert slot.committed_stats() is None
        assert slot.generation == 1
    assert not (root / "00004.tar").exists()


@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_a_finished_local_dataset_holds_only_data(http_server, tmp_path, executor):
    rows = plain_rows(http_server, 2 * SHARD_SIZE + 1)
    output = tmp_path / "data"
    mmdata.download(**job_options(write_input(rows, tmp_path, "parquet"), str(output)), executor=executor,
                    workers=2)
    names = sorted(path.name for path in output.iterdir())
    assert LOCK_FOLDER not in names and ATTEMPTS_FOLDER not in names
    assert not [name for name in names if name.startswith(".")], f"hidden files left: {names}"
    assert names == sorted(["manifest.json"] + [f"{shard}{suffix}" for shard in ("00000", "00001", "00002")
                                                for suffix in (".tar", ".parquet", "_stats.json")])
    check_dataset(output, rows, SHARD_SIZE)
    assert layout.complete_shards(output) == ["00000", "00001", "00002"]
