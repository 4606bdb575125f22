"""Pipeline files: ${var} substitution with --set overrides, stages run in order, complete stages skipped,
and a failure that names its stage and the command that resumes."""

import io

import pytest
from PIL import Image

from mmdata.cli import main as cli_main
from mmdata.layout import sample_key, sample_uid
from mmdata.pipeline import PipelineError, load_pipeline, parse_overrides, run_pipeline
from mmdata.shard_output import shard_output

PIPELINE = """
vars:
  workdir: {workdir}
  samples: 40
  dataset: {workdir}/missing
stages:
  - stage: synthetic
    with: {{corpus: "${{workdir}}/corpus", samples: "${{samples}}", seed: 3}}
  - stage: report
    with: {{dataset: "${{dataset}}", output: "${{workdir}}/report.html"}}
"""


def _write_dataset(root):
    """A two-sample dataset written directly (no download): one success with an image, one failure."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buffer, "JPEG")
    with shard_output(root, 0) as output:
        url, caption = "http://127.0.0.1:1/a.jpg", "a red square"
        key = sample_key(0, 0, 10)
        output.add({"key": key, "uid": sample_uid(url, caption), "url": url, "caption": caption, "status": "success",
                    "width": 32, "height": 24, "original_width": 32, "original_height": 24},
                   {"jpg": buffer.getvalue(), "txt": caption.encode()})
        output.add({"key": sample_key(0, 1, 10), "uid": sample_uid("ftp://x", "b"), "url": "ftp://x", "caption": "b",
                    "status": "invalid_url", "error_message": "scheme ftp", "error_class": "bad_scheme"})
        output.commit({"count": 2, "successes": 1})


def test_substitution_keeps_types_and_overrides_win(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(workdir=tmp_path))
    stages = load_pipeline(path, parse_overrides(["samples=12"]))
    assert [s["stage"] for s in stages] == ["synthetic", "report"]
    assert stages[0]["with"] == {"corpus": f"{tmp_path}/corpus", "samples": 12, "seed": 3}
    assert stages[1]["with"]["dataset"] == f"{tmp_path}/missing"
    with pytest.raises(ValueError, match="not in the pipeline's vars"):
        load_pipeline(path, {"sample": 3})
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["samples"])
    path.write_text("stages:\n  - stage: dowload\n    with: {}\n")
    with pytest.raises(ValueError, match="known stages: download"):
        load_pipeline(path)
    path.write_text("stages:\n  - stage: report\n    with: {dataset: '${nowhere}'}\n")
    with pytest.raises(ValueError, match=r"\$\{nowhere\} is not defined"):
        load_pipeline(path)


def test_failure_names_the_stage_and_rerun_skips_what_is_complete(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(workdir=tmp_path))
    with pytest.raises(PipelineError) as failure:
        run_pipeline(path)
    message = str(failure.value)
    assert "stage 2 (report) failed" in message and f"mmdata run {path}" in message
    assert (tmp_path / "corpus" / "truth.parquet").exists()

    # The CLI says the same and exits non-zero; the synthetic stage is skipped this time.
    assert cli_main(["run", str(path)]) == 1
    captured = capsys.readouterr()
    assert "[1/2] synthetic: complete, skipped" in captured.out
    assert "stage 2 (report) failed" in captured.err and "resume" in captured.err

    _write_dataset(tmp_path / "data")
    results = run_pipeline(path, overrides={"dataset": str(tmp_path / "data")})
    assert [(r.stage, r.status) for r in results] == [("synthetic", "skipped"), ("report", "ran")]
    assert "Curation report" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("name", ["cc3m.yaml", "laion-style.yaml", "demo.yaml"])
def test_shipped_pipelines_name_real_options(name):
    """Every stage's options are ones its library function accepts (checked without running it)."""
    import dataclasses
    import inspect
    from pathlib import Path

    import mmdata
    from mmdata import demo
    from mmdata.download.config import DownloadConfig
    from mmdata.execution import ExecutionConfig
    from mmdata.report.html import write_report
    from mmdata.score.config import ScoreConfig

    functions = {"dedup": mmdata.dedup, "filter": mmdata.filter_view, "reshard": mmdata.reshard,
                 "report": write_report, "synthetic": demo.make_corpus, "serve": demo.serve_corpus_stage,
                 "seed_view": demo.seed_view, "train": demo.train_stage, "evaluate": demo.evaluate}
    stages = load_pipeline(Path(__file__).resolve().parents[2] / "pipelines" / name)
    assert stages
    for entry in stages:
        options = dict(entry["with"])
        ExecutionConfig.from_options(options)  # every stage that runs tasks takes executor/workers/ray_address
        if entry["stage"] == "download":
            DownloadConfig.from_options(**options)
        elif entry["stage"] == "score":
            assert set(options) <= {field.name for field in dataclasses.fields(ScoreConfig)}
        else:
            function = functions[entry["stage"]]
            if entry["stage"] in ("dedup", "filter", "reshard", "report"):
                options = {"root": options.pop("dataset"), **options}
            inspect.signature(function).bind(**options)


URL_PIPELINE = """
vars:
  workdir: {workdir}
stages:
  - stage: filter
    with: {{dataset: "${{workdir}}/data", view: "stored", storage_options: {{use_ssl: false}}}}
  - stage: report
    with: {{dataset: "${{workdir}}/data", output: "${{workdir}}/report.html", view: "stored"}}
"""


def test_a_pipeline_on_s3_runs_its_stages_there_and_skips_them_there(s3_bucket, tmp_path, capsys):
    from mmdata.curate.view import read_view
    from mmdata.storage import location

    _write_dataset(f"{s3_bucket}/w/data")
    path = tmp_path / "p.yaml"
    path.write_text(URL_PIPELINE.format(workdir=tmp_path / "nowhere"))
    assert cli_main(["run", str(path), "--set", f"workdir={s3_bucket}/w"]) == 0
    assert read_view(f"{s3_bucket}/w/data", "stored").column("key").to_pylist() == [sample_key(0, 0, 10)]
    report = location(f"{s3_bucket}/w/report.html").read_text()
    assert "Curation report" in report and f"{s3_bucket}/w/data" in report
    assert not (tmp_path / "nowhere").exists()
    capsys.readouterr()
    assert cli_main(["run", str(path), "--set", f"workdir={s3_bucket}/w"]) == 0
    assert "[1/2] filter: complete, skipped" in capsys.readouterr().out  # its view is found on the bucket
