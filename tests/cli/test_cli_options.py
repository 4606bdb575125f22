"""What the command line hands the library: the same execution flags on every work command, and only
the options a user typed, so that every default lives in the library."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from mmdata.cli import build_parser, main
from mmdata.cli._defaults import MARKER

WORK_COMMANDS = ("download", "score", "annotate", "dedup", "decontaminate", "balance", "reshard", "index", "run")
EXECUTION_FLAGS = ("--executor", "--workers", "--ray-address")


def command_names() -> list[str]:
    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    return sorted(subparsers.choices)


def help_of(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


class Recorder:
    """Stands in for a library function: records each call's arguments and returns ``result``."""

    def __init__(self, result):
        self.result = result
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result


@pytest.fixture
def record(monkeypatch):
    """``record("module:function", result)`` replaces the library function the command calls."""

    def replace(target: str, result) -> Recorder:
        module, _, name = target.partition(":")
        recorder = Recorder(result)
        monkeypatch.setattr(f"{module}.{name}", recorder)
        return recorder

    return replace


ANNOTATION_RESULT = SimpleNamespace(counts={"examined": 0}, path="annotations/x.parquet")
SCORE_SUMMARY = {"model_id": "m", "shards": 0, "shards_skipped": 0, "counts": {}, "samples_per_second": 0.0,
                 "output_dir": "scores/m", "failures": []}
# (command line with only what is required, library function, its result, the call it must receive)
REQUIRED_ONLY = [
    (["dedup", "data"], "mmdata.curate.dedup:dedup", ANNOTATION_RESULT, (("data",), {})),
    (["decontaminate", "data", "--against", "eval"], "mmdata.curate.decontaminate:decontaminate",
     ANNOTATION_RESULT, (("data",), {"against": "eval"})),
    (["reshard", "data", "--view", "v", "-o", "out"], "mmdata.curate.reshard:reshard",
     {"samples": 0, "shards": []}, (("data",), {"view": "v", "output": "out"})),
    (["score", "data", "--model", "ViT-B-32"], "mmdata.score.job:score", SCORE_SUMMARY,
     ((), {"dataset": "data", "model": "ViT-B-32"})),
]


@pytest.mark.parametrize("command", WORK_COMMANDS)
def test_work_commands_take_the_execution_flags(command, capsys):
    text = help_of(command, capsys)
    for flag in EXECUTION_FLAGS:
        assert flag in text
    assert "{ray,processes,inline}" in text


def test_every_help_renders_with_its_library_defaults(capsys):
    from mmdata.curate.dedup import DedupConfig
    from mmdata.curate.reshard import ReshardConfig
    from mmdata.download.config import DownloadConfig
    from mmdata.score.config import ScoreConfig

    texts = {command: help_of(command, capsys) for command in command_names()}
    assert set(WORK_COMMANDS) <= set(texts)
    for command, text in texts.items():
        assert MARKER not in text and "library_default" not in text, command
    flat = {command: " ".join(text.split()) for command, text in texts.items()}  # undo the help's line wrapping
    assert f"(default {DedupConfig.hamming})" in flat["dedup"]
    assert f"(default {DedupConfig.eps})" in flat["dedup"]
    assert f"(default {ReshardConfig.shard_size})" in flat["reshard"]
    assert f"(default {ScoreConfig.batch_size})" in flat["score"]
    assert f"(default {DownloadConfig.threads})" in flat["download"]


@pytest.mark.parametrize("argv, target, result, expected", REQUIRED_ONLY, ids=lambda value: str(value)[:20])
def test_a_bare_command_passes_only_the_required_options(argv, target, result, expected, record, capsys):
    library = record(target, result)
    assert main(argv) == 0
    assert library.calls == [expected]


def test_typed_options_reach_the_library_parsed(record, capsys):
    dedup = record("mmdata.curate.dedup:dedup", ANNOTATION_RESULT)
    assert main(["dedup", "data", "--near", "--hamming", "6", "--executor", "inline", "--workers", "2"]) == 0
    # naming a tier turns the unnamed ones off: `--near` alone runs only the near tier
    assert dedup.calls == [(("data",), {"exact": False, "near": True, "semantic": False, "hamming": 6,
                                        "executor": "inline", "workers": 2})]

    score = record("mmdata.score.job:score", SCORE_SUMMARY)
    assert main(["score", "data", "--model", "M", "--no-embeddings", "--quiet",
                 "--ray-address", "ray://head:10001"]) == 0
    assert score.calls == [((), {"dataset": "data", "model": "M", "no_embeddings": True, "show_progress": False,
                                 "ray_address": "ray://head:10001"})]

    index = SimpleNamespace(report={"tuned_recall": None, "plan": {"factory": "Flat"}, "index_bytes": 0,
                                    "build_seconds": 0.0, "search_params": {}},
                            rebuilt=True, count=0, kind="image", model_id="m", version_dir="index/m/image/v")
    build_index = record("mmdata.search.index:build_index", index)
    assert main(["index", "data", "--executor", "processes", "--max-index-memory", "2GB"]) == 0
    assert build_index.calls == [(("data",), {"max_index_memory": "2GB", "executor": "processes"})]


def test_run_hands_the_execution_flags_to_the_pipeline(record, tmp_path, capsys):
    run_pipeline = record("mmdata.pipeline:run_pipeline", [])
    assert main(["run", "pipeline.yaml"]) == 0
    assert main(["run", "pipeline.yaml", "--set", "n=3", "--executor", "processes", "--workers", "3"]) == 0
    (_, bare), (_, flagged) = run_pipeline.calls
    assert not {"executor", "workers", "ray_address"} & set(bare)
    assert flagged["executor"] == "processes" and flagged["workers"] == 3 and flagged["overrides"] == {"n": 3}


def test_download_passes_only_what_was_typed(record, capsys):
    download = record("mmdata.download.job:download", {})
    record("mmdata.download.job:summary_text", "summary")
    assert main(["download", "urls.parquet", "-o", "data"]) == 0
    assert main(["download", "urls.parquet", "-o", "data", "--no-header", "--columns", "caption,url",
                 "--threads", "4", "--executor", "processes"]) == 0
    assert download.calls[0] == ((), {"input": "urls.parquet", "output_dir": "data"})
    assert download.calls[1] == ((), {"input": "urls.parquet", "output_dir": "data", "threads": 4, "no_header": True,
                                      "columns": ("caption", "url"), "executor": "processes"})


def test_download_takes_every_img2dataset_option_and_passes_only_what_was_typed(record, capsys):
    from mmdata.download.img2dataset_options import OPTIONS

    text = help_of("download", capsys)
    for name in OPTIONS:
        assert f"--{name}" in text, name
    download = record("mmdata.download.job:download", {})
    record("mmdata.download.job:summary_text", "summary")
    assert main(["download", "--url_list=urls.txt", "--output_folder=out", "--caption_col=None"]) == 0
    assert download.calls == [((), {"url_list": "urls.txt", "output_folder": "out", "caption_col": None})]


def test_top_level_help_is_the_user_description_and_the_loop(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Curate image-text pretraining data" in text
    assert "the loop in five commands:" in text
    for command in ("download", "score", "dedup", "filter", "reshard"):
        assert f"  mmdata {command} " in text
    assert "register(subparsers)" not in text and "handler" not in text  # not the package docstring


@pytest.mark.parametrize("argv, message", [
    (["dedup", "data", "--executor", "spark"], "invalid choice: 'spark'"),
    (["reshard", "data", "--view", "v", "-o", "out", "--workers", "two"], "invalid int value: 'two'"),
    (["dedup", "data", "--hamming", "8.5"], "invalid int value: '8.5'"),
])
def test_a_wrong_flag_value_exits_2_naming_it(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["dedup", "reshard", "index"])
def test_ray_address_without_ray_is_refused_before_any_work(command, tmp_path, capsys):
    required = {"reshard": ["--view", "v", "-o", str(tmp_path / "out")]}.get(command, [])
    argv = [command, str(tmp_path), *required, "--executor", "processes", "--ray-address", "ray://head:10001"]
    assert main(argv) == 2
    assert "--ray-address needs --executor ray" in capsys.readouterr().err


def test_building_the_parser_imports_no_stage():
    probe = ("import sys; from mmdata.cli import build_parser; build_parser(); "
             "print(sorted(name for name in ('numpy', 'pyarrow', 'torch', 'ray', 'PIL') if name in sys.modules))")
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"
