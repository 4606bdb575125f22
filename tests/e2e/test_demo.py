"""The offline demo end to end (a reduced corpus): every stage runs, the report opens cleanly in
Chromium with every section filled, and curation is checked against the ground truth."""

import json

import pyarrow.parquet as pq
import pytest

from browser import open_report, require_chromium
from mmdata.demo import PIPELINE, main
from mmdata.report.html import SECTIONS

FAST = {"samples": 300, "min_side": 96, "max_side": 320, "train_seconds": 0, "min_train_steps": 8,
        "student_seconds": 0}
FULL = {"samples": 1500, "train_seconds": 30, "min_train_steps": 60, "student_seconds": 5}


def _run_demo(workdir, settings):
    argv = ["--workdir", str(workdir)] + [arg for name, value in settings.items() for arg in ("--set", f"{name}={value}")]
    assert main(argv) == 0
    return json.loads((workdir / "quality.json").read_text())


def _check_outputs(workdir, quality, settings):
    truth = pq.read_table(workdir / "corpus" / "truth.parquet")
    assert truth.num_rows == settings["samples"]
    statuses = quality["status_by_kind"]
    # What the web did to each kind: broken URLs fail, opt-outs are honoured, junk bodies do not decode.
    assert set(statuses["clean"]) == {"success"}
    assert set(statuses["broken"]) <= {"invalid_url", "failed_to_download"}
    assert set(statuses["optout"]) == {"opted_out"}
    assert set(statuses["undecodable"]) == {"failed_to_decode"}
    assert quality["dedup"]["recall"]["exact_dup"]["recall"] == 1.0
    assert quality["dedup"]["precision"]["exact"]["precision"] == 1.0
    curated = pq.read_table(workdir / "curated" / "00000.parquet")
    assert curated.num_rows > 0 and set(curated.column("status").to_pylist()) == {"success"}
    assert json.loads((workdir / "student" / "train.json").read_text())["steps"] >= 1


def _check_report_in_browser(workdir):
    require_chromium()
    page = open_report(workdir / "report.html", workdir / "report.png")
    assert page["errors"] == []
    assert page["sections"] == [key for key, _ in SECTIONS]
    assert page["not_run"] == []  # every stage ran, so no section is empty
    sections_with_images = {image["section"] for image in page["images"]}
    assert sections_with_images == {"funnel", "domains", "sizes", "scores", "threshold", "duplicates"}
    assert all(image["width"] > 0 for image in page["images"])
    assert (workdir / "report.png").stat().st_size > 50_000


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory):
    """The loop's plumbing on a small corpus, with a filter network trained for a few steps only."""
    workdir = tmp_path_factory.mktemp("demo")
    return workdir, _run_demo(workdir, FAST)


def test_fast_demo_outputs(fast_demo):
    workdir, quality = fast_demo
    _check_outputs(workdir, quality, FAST)
    assert 0.0 <= quality["auc_mismatched"] <= 1.0


def test_fast_demo_report_in_chromium(fast_demo):
    _check_report_in_browser(fast_demo[0])


@pytest.mark.slow
def test_demo_finds_mismatched_captions_and_duplicates(tmp_path, capsys):
    quality = _run_demo(tmp_path, FULL)
    _check_outputs(tmp_path, quality, FULL)
    assert quality["auc_mismatched"] >= 0.9
    assert quality["view"]["kept_precision"] >= 0.95
    assert quality["dedup"]["recall"]["near_dup"]["recall"] >= 0.9
    assert "ROC AUC of clip_score" in capsys.readouterr().out
    # Re-running the finished demo skips every stage that has outputs.
    assert main(["--workdir", str(tmp_path)] + [a for n, v in FULL.items() for a in ("--set", f"{n}={v}")]) == 0
    assert "[1/12] synthetic: complete, skipped" in capsys.readouterr().out
    _check_report_in_browser(tmp_path)


def test_demo_pipeline_file_is_the_one_shipped():
    assert PIPELINE.name == "demo.yaml" and PIPELINE.exists()
