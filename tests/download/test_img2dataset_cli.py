"""img2dataset's command line and Python call on ``mmdata download``: python-fire's value forms, the
one mapping of img2dataset's options (mapped, refused, noted, defaults of an img2dataset call), and
whole runs against the loopback image server (``--allow_network=127.0.0.1/32`` lets them reach it)."""

from __future__ import annotations

import gzip
import io
import json
import math
import subprocess
import sys
import types
import uuid
from pathlib import Path

import pytest
from download_checks import check_dataset, tar_samples, write_input
from http_server import image_bytes
from PIL import Image

import mmdata
from mmdata import layout
from mmdata.cli import main
from mmdata.download import job
from mmdata.download.config import DownloadConfig
from mmdata.download.img2dataset_options import OPTIONS, RENAMED, translate
from mmdata.download.job import RunOptions
from mmdata.download.net import Fetcher, FetchPolicy
from mmdata.options import stage_settings

LOOPBACK = "127.0.0.1/32"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def recorded(monkeypatch):
    """The library call ``mmdata download`` makes, recorded instead of run: what the command line hands over."""
    calls: list[dict] = []

    def download(**options):
        calls.append(options)
        return {}

    monkeypatch.setattr("mmdata.download.job.download", download)
    monkeypatch.setattr("mmdata.download.job.summary_text", lambda manifest: "summary")
    return calls


def image_rows(server, name: str, count: int, *, width: int = 40, height: int = 30) -> list[dict]:
    run = uuid.uuid4().hex[:8]
    return [{"url": server.url(f"/img/{name}-{run}-{index}.jpg?w={width}&h={height}"), "caption": f"{name} {index}"}
            for index in range(count)]


def url_list(rows: list[dict], folder: Path, name: str = "urls.txt") -> Path:
    """img2dataset's default input: one URL a line."""
    path = folder / name
    text = "".join(f"{row['url']}\n" for row in rows)
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def hits(server, rows: list[dict]) -> list[int]:
    """Requests the server saw for each row's URL."""
    return [len(server.hits(row["url"])) for row in rows]


# -- the command line: python-fire's value forms --------------------------------------------------------------------

@pytest.mark.parametrize("typed, expected", [
    (["--thread_count", "8"], {"thread_count": 8}),
    (["--thread_count=8"], {"thread_count": 8}),
    (["--thread-count", "8"], {"thread_count": 8}),
    (["--caption_col", "text"], {"caption_col": "text"}),
    (["--caption_col=None"], {"caption_col": None}),
    (["--max_aspect_ratio=2.5"], {"max_aspect_ratio": 2.5}),
    (["--max_image_area", "inf"], {"max_image_area": "inf"}),
    (["--timeout", "2.5"], {"timeout": 2.5}),  # --timeout is the same flag in both spellings
    (["--skip_reencode"], {"skip_reencode": True}),
    (["--skip_reencode", "--thread_count", "2"], {"skip_reencode": True, "thread_count": 2}),
    (["--skip_reencode=True"], {"skip_reencode": True}),
    (["--skip_reencode=False"], {"skip_reencode": False}),
    (["--skip_reencode", "False"], {"skip_reencode": False}),
    (["--noskip_reencode"], {"skip_reencode": False}),
    (["--extract_exif", "--noresize_only_if_bigger"], {"extract_exif": True, "resize_only_if_bigger": False}),
    (["--save_additional_columns", "uid,source"], {"save_additional_columns": ("uid", "source")}),
    (["--save_additional_columns", '["uid","source"]'], {"save_additional_columns": ["uid", "source"]}),
    (["--save_additional_columns=[uid,source]"], {"save_additional_columns": ["uid", "source"]}),
    (["--verify_hash", '["sha256","sha256"]'], {"verify_hash": ["sha256", "sha256"]}),
    (["--disallowed_header_directives", "[]"], {"disallowed_header_directives": []}),
    (["--allow_network", "127.0.0.1/32"], {"allow_network": "127.0.0.1/32"}),
    (["--incremental_mode", "overwrite", "--max_shard_retry", "3"], {"incremental_mode": "overwrite",
                                                                     "max_shard_retry": 3}),
])
def test_fire_value_forms_reach_the_library_as_fire_reads_them(typed, expected, recorded):
    assert main(["download", "--url_list", "urls.txt", "--output_folder", "out", *typed]) == 0
    assert recorded == [{"url_list": "urls.txt", "output_folder": "out", **expected}]


def test_img2dataset_laion400m_example_parses_and_maps(recorded):
    """dataset_examples/laion400m.md, with the command name changed."""
    argv = ("download --url_list laion400m-meta --input_format parquet --url_col URL --caption_col TEXT "
            "--output_format webdataset --output_folder laion400m-data --processes_count 16 --thread_count 128 "
            "--image_size 256").split()
    assert main([*argv, "--save_additional_columns", '["NSFW","similarity","LICENSE"]', "--enable_wandb",
                 "True"]) == 0
    (typed,) = recorded
    options, notes = translate(typed)
    assert {name: options[name] for name in ("input", "output_dir", "input_format", "url_col", "caption_col",
                                             "workers", "threads", "image_size", "save_additional_columns",
                                             "enable_wandb", "executor")} == {
        "input": "laion400m-meta", "output_dir": "laion400m-data", "input_format": "parquet", "url_col": "URL",
        "caption_col": "TEXT", "workers": 16, "threads": 128, "image_size": 256,
        "save_additional_columns": ("NSFW", "similarity", "LICENSE"), "enable_wandb": True, "executor": "processes"}
    assert notes == []


def test_mmdata_spellings_and_img2dataset_names_mix(recorded):
    assert main(["download", "urls.parquet", "-o", "out", "--url-col", "link", "--thread_count", "8",
                 "--caption_col=None", "--retries", "0", "--executor", "inline", "--no-header", "--columns",
                 "caption,link"]) == 0
    assert recorded == [{"input": "urls.parquet", "output_dir": "out", "url_col": "link", "thread_count": 8,
                         "caption_col": None, "retries": 0, "executor": "inline", "no_header": True,
                         "columns": ("caption", "link")}]


def test_an_unknown_option_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["download", "--url_list", "urls.txt", "--output_folder", "out", "--nonexistent_option", "3"])
    assert exit_info.value.code == 2
    assert "--nonexistent_option" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown download option 'nonexistent_option'"):
        mmdata.download(url_list=str(tmp_path / "urls.txt"), output_folder=str(tmp_path / "out"), nonexistent_option=3)


@pytest.mark.parametrize("typed, message", [
    (["--distributor", "pyspark"], "distributor='pyspark' is not supported"),
    (["--output_format", "files"], "output_format='files' is not written by mmdata"),
    (["--output_format=tfrecord"], "output_format='tfrecord' is not written by mmdata"),
    (["--input_format", "xml"], "input_format must be one of"),
    (["--incremental_mode", "extend"], "incremental_mode='extend'"),
    (["--thread_count", "many"], "thread_count takes a whole number, got 'many'"),
    (["--skip_reencode", "yes"], "skip_reencode takes True or False, got 'yes'"),
    (["--thread_count", "8", "--threads", "4"], "thread_count and threads both set threads"),
    (["--processes_count", "2", "--workers", "4"], "processes_count and workers both set workers"),
    (["--enable_wandb"], "enable_wandb needs the wandb package"),
])
def test_a_refused_option_exits_2_naming_it(typed, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not importable, whatever is installed
    listing = url_list([], tmp_path)
    assert main(["download", f"--url_list={listing}", f"--output_folder={tmp_path / 'out'}", *typed]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "refused before anything was written"


# -- the mapping ----------------------------------------------------------------------------------------------------

def test_an_img2dataset_call_gets_img2dataset_defaults_and_a_note_on_the_layout():
    options, notes = translate({"url_list": "urls.txt", "output_folder": "out"})
    assert {name: options[name] for name in ("input", "output_dir", "threads", "workers", "executor", "caption_col",
                                             "retries", "shard_size", "timeout", "extract_exif", "compute_hash",
                                             "max_shard_retry", "incremental_mode", "wandb_project")} == {
        "input": "urls.txt", "output_dir": "out", "threads": 256, "workers": 1, "executor": "processes",
        "caption_col": None, "retries": 0, "shard_size": 10_000, "timeout": 10.0, "extract_exif": True,
        "compute_hash": "sha256", "max_shard_retry": 1, "incremental_mode": "incremental",
        "wandb_project": "img2dataset"}
    assert "input_format" not in options  # .txt: read as txt from its extension
    assert len(notes) == 1 and "output_format" in notes[0] and "webdataset" in notes[0]
    # left to mmdata's default, which means the same (or, for the layout, the one mmdata writes)
    left = {name for name in OPTIONS if RENAMED.get(name, name) not in options}
    assert left == {"output_format", "input_format", "save_additional_columns", "oom_shard_count", "verify_hash",
                    "subjob_size", "user_agent_token", "disallowed_header_directives"}

    assert translate({"output_folder": "out", "input": "urls"})[0]["input_format"] == "txt"  # no extension: txt
    assert translate({"url_list": "s3://bucket/part.parquet", "output_folder": "o"})[0].get("input_format") is None
    assert translate({"url_list": "u.txt", "output_folder": "o", "output_format": "webdataset"})[1] == []
    given = translate({"url_list": "u.txt", "output_folder": "o", "threads": 8, "executor": "inline"})[0]
    assert (given["threads"], given["executor"]) == (8, "inline")  # mmdata's names count as given


def test_an_mmdata_call_keeps_mmdata_defaults_under_either_name():
    options, notes = translate({"input": "urls.parquet", "output_dir": "out", "thread_count": 8,
                                "number_sample_per_shard": 100, "oom_shard_count": 6, "processes_count": 3})
    assert options == {"input": "urls.parquet", "output_dir": "out", "threads": 8, "shard_size": 100,
                       "shard_digits": 6, "workers": 3}
    assert notes == []


@pytest.mark.parametrize("value, executor", [("multiprocessing", "processes"), ("ray", "ray")])
def test_distributor_maps_onto_the_executor(value, executor):
    assert translate({"distributor": value})[0] == {"executor": executor}


@pytest.mark.parametrize("value, mmdata_format", [
    ("txt", "txt"), ("txt.gz", "txt"), ("csv", "csv"), ("csv.gz", "csv"), ("tsv", "tsv"), ("tsv.gz", "tsv"),
    ("jsonl", "jsonl"), ("jsonl.gz", "jsonl"), ("json", "json"), ("json.gz", "json"), ("parquet", "parquet"),
])
def test_input_formats_map_onto_mmdata_formats(value, mmdata_format):
    assert translate({"input_format": value})[0] == {"input_format": mmdata_format}


def test_list_options_none_means_the_default_and_empty_means_none():
    assert translate({"disallowed_header_directives": None, "save_additional_columns": None})[0] == {}
    assert translate({"disallowed_header_directives": []})[0] == {"disallowed_header_directives": ()}
    assert translate({"save_additional_columns": "uid"})[0] == {"save_additional_columns": ("uid",)}
    assert translate({"allow_network": "127.0.0.1/32,10.0.0.0/8"})[0] == {
        "allow_network": ["127.0.0.1/32", "10.0.0.0/8"]}
    assert translate({"max_aspect_ratio": "inf"})[0] == {"max_aspect_ratio": math.inf}


def test_subjob_size_is_accepted_with_a_note_saying_it_has_no_effect():
    options, notes = translate({"subjob_size": 50})
    assert options == {} and len(notes) == 1 and notes[0].startswith("subjob_size=50 has no effect")


# A value other than img2dataset's default for each option that acts here, and where the job keeps it.
NON_DEFAULTS = {
    "image_size": (64, "image_size", 64),
    "processes_count": (3, "workers", 3),
    "resize_mode": ("center_crop", "resize_mode", "center_crop"),
    "resize_only_if_bigger": (True, "resize_only_if_bigger", True),
    "upscale_interpolation": ("bicubic", "upscale_interpolation", "bicubic"),
    "downscale_interpolation": ("bilinear", "downscale_interpolation", "bilinear"),
    "encode_quality": (80, "encode_quality", 80),
    "encode_format": ("png", "encode_format", "png"),
    "skip_reencode": (True, "skip_reencode", True),
    "output_format": ("webdataset", None, None),
    "input_format": ("txt.gz", "input_format", "txt"),
    "url_col": ("link", "url_col", "link"),
    "caption_col": ("text", "caption_col", "text"),
    "bbox_col": ("face_bboxes", "bbox_col", "face_bboxes"),
    "thread_count": (7, "threads", 7),
    "number_sample_per_shard": (100, "shard_size", 100),
    "extract_exif": (False, "extract_exif", False),
    "save_additional_columns": (["source"], "save_additional_columns", ["source"]),
    "timeout": (3, "timeout", 3.0),
    "wandb_project": ("other", "wandb_project", "other"),
    "oom_shard_count": (8, "shard_digits", 8),
    "compute_hash": ("md5", "compute_hash", "md5"),
    "verify_hash": (["md5", "md5"], "verify_hash", ["md5", "md5"]),
    "distributor": ("ray", "executor", "ray"),
    "retries": (2, "retries", 2),
    "disable_all_reencoding": (True, "disable_all_reencoding", True),
    "min_image_size": (10, "min_image_size", 10),
    "max_image_area": (1e6, "max_image_area", 1e6),
    "max_aspect_ratio": (3.0, "max_aspect_ratio", 3.0),
    "incremental_mode": ("overwrite", "incremental_mode", "overwrite"),
    "max_shard_retry": (4, "max_shard_retry", 4),
    "user_agent_token": ("mytoken", "user_agent_token", "mytoken"),
    "disallowed_header_directives": (["noai"], "disallowed_header_directives", ["noai"]),
    "ignore_ssl_certificate": (True, "ignore_ssl_certificate", True),
}
# Covered elsewhere: the input and output (every run), enable_wandb (below), subjob_size (a note).
COVERED_ELSEWHERE = {"url_list", "output_folder", "enable_wandb", "subjob_size"}


def test_every_img2dataset_option_acts_on_the_job(tmp_path):
    assert set(NON_DEFAULTS) | COVERED_ELSEWHERE == set(OPTIONS)
    listing = url_list([], tmp_path, "urls.txt.gz")
    for name, (value, field, expected) in NON_DEFAULTS.items():
        options, _ = translate({"url_list": str(listing), "output_folder": str(tmp_path / "out"), name: value})
        run = RunOptions.take(options)
        config, execution = stage_settings(DownloadConfig, "download", None, None, options)
        flat = {**config.to_dict(), **config.to_dict()["input"], **config.to_dict()["image"],
                **config.to_dict()["network"], "incremental_mode": run.incremental_mode,
                "max_shard_retry": run.max_shard_retry, "wandb_project": run.wandb_project,
                "executor": execution.executor, "workers": execution.workers}
        if field is not None:
            assert flat[field] == expected, name


# -- whole runs -----------------------------------------------------------------------------------------------------

def test_python_m_mmdata_runs_img2dataset_readme_command(http_server, tmp_path):
    rows = image_rows(http_server, "readme", 3, width=200, height=305)
    listing = url_list([*rows, {"url": http_server.url("/status/404")}], tmp_path, "myimglist.txt")
    output = tmp_path / "output_folder"
    done = subprocess.run(
        [sys.executable, "-m", "mmdata", "download", f"--url_list={listing}", f"--output_folder={output}",
         "--thread_count=64", "--image_size=256", f"--allow_network={LOOPBACK}"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "note: output_format" in done.stderr
    assert "4 samples in 1 shards: 3 stored" in done.stdout
    assert sorted(path.name for path in output.iterdir()) == [
        "00000.parquet", "00000.tar", "00000_stats.json", "manifest.json"]
    samples = tar_samples(output)
    assert sorted(samples) == ["000000000", "000000001", "000000002"]  # img2dataset's keys: shard, then row
    for key, members in samples.items():
        assert set(members) == {"jpg", "json"}  # no caption column by default: no .txt
        assert Image.open(io.BytesIO(members["jpg"])).size == (256, 256)  # border, img2dataset's default
        assert json.loads(members["json"])["url"] == rows[int(key)]["url"]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["options"]["threads"] == 64
    assert manifest["options"]["network"]["retries"] == 0  # img2dataset's default, not mmdata's
    assert manifest["options"]["input"]["caption_col"] is None


def test_gzipped_text_input_and_captions_as_img2dataset_reads_them(http_server, tmp_path):
    rows = image_rows(http_server, "gz", 3)
    listing = url_list(rows, tmp_path, "urls.txt.gz")
    manifest = mmdata.download(url_list=str(listing), output_folder=str(tmp_path / "out"), input_format="txt.gz",
                               output_format="webdataset", allow_network=[LOOPBACK], executor="inline",
                               number_sample_per_shard=2)
    assert manifest["totals"]["successes"] == 3 and len(manifest["shards"]) == 2
    check_dataset(tmp_path / "out", [{**row, "caption": None} for row in rows], 2)

    source = write_input(rows, tmp_path, "parquet")
    mmdata.download(url_list=str(source), output_folder=str(tmp_path / "captioned"), input_format="parquet",
                    caption_col="caption", output_format="webdataset", allow_network=[LOOPBACK],
                    distributor="multiprocessing", processes_count=2, number_sample_per_shard=2)
    check_dataset(tmp_path / "captioned", rows, 2)


def test_distributor_ray_runs_the_shards_on_ray(http_server, ray_local, tmp_path):
    rows = image_rows(http_server, "ray", 4)
    source = write_input(rows, tmp_path, "parquet")
    manifest = mmdata.download(url_list=str(source), output_folder=str(tmp_path / "out"), input_format="parquet",
                               caption_col="caption", output_format="webdataset", distributor="ray",
                               number_sample_per_shard=2, allow_network=[LOOPBACK])
    assert manifest["totals"]["successes"] == 4
    check_dataset(tmp_path / "out", rows, 2)


def test_incremental_resumes_and_overwrite_starts_again(http_server, tmp_path):
    rows = image_rows(http_server, "incremental", 4)
    output = tmp_path / "out"
    options = dict(url_list=str(url_list(rows, tmp_path)), output_folder=str(output), output_format="webdataset",
                   allow_network=[LOOPBACK], executor="inline", number_sample_per_shard=2)
    mmdata.download(**options)
    assert hits(http_server, rows) == [1, 1, 1, 1]

    (output / "manifest.json").unlink()  # as if the first run had been stopped before shard 1 was complete
    (output / "00001_stats.json").unlink()
    (output / "notes.txt").write_text("kept by a resume")
    mmdata.download(**options)  # incremental_mode="incremental", img2dataset's default: only shard 1 again
    assert hits(http_server, rows) == [1, 1, 2, 2]
    assert (output / "notes.txt").exists()

    manifest = mmdata.download(**options, incremental_mode="overwrite")  # the folder removed, all again
    assert hits(http_server, rows) == [2, 2, 3, 3]
    assert not (output / "notes.txt").exists() and manifest["totals"]["successes"] == 4
    check_dataset(output, [{**row, "caption": None} for row in rows], 2)


def test_overwrite_removes_only_a_dataset_folder(tmp_path):
    folder = tmp_path / "not-a-dataset"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    listing = url_list([], tmp_path)
    with pytest.raises(ValueError, match="holds no dataset"):
        mmdata.download(url_list=str(listing), output_folder=str(folder), incremental_mode="overwrite")
    assert (folder / "thesis.tex").exists()


def test_a_failed_shard_runs_again_once_the_others_are_done(http_server, tmp_path, monkeypatch, capsys):
    rows = image_rows(http_server, "retry", 6)
    calls: list[int] = []
    real_download_shard = job.download_shard

    def failing_once(config, shard, rows, progress=None):  # a fault in one shard's first attempt
        calls.append(shard)
        if shard == 0 and calls.count(0) == 1:
            raise OSError("disk hiccup")
        return real_download_shard(config, shard, rows, progress)

    monkeypatch.setattr(job, "download_shard", failing_once)
    options = dict(input=str(write_input(rows, tmp_path, "parquet")), shard_size=2, allow_network=[LOOPBACK],
                   executor="inline")
    manifest = mmdata.download(output_dir=str(tmp_path / "out"), **options)  # max_shard_retry=1, img2dataset's
    assert calls == [0, 1, 2, 0]
    assert "1 shard(s) failed (00000: OSError: disk hiccup); running them again (1 of 1)" in capsys.readouterr().err
    assert manifest["totals"]["successes"] == 6
    check_dataset(tmp_path / "out", rows, 2)

    calls.clear()
    with pytest.raises(OSError, match="disk hiccup") as caught:  # no retry: the first failure fails the job
        mmdata.download(output_dir=str(tmp_path / "no-retry"), max_shard_retry=0, **options)
    assert calls == [0]
    assert "while downloading shard 00000; re-run the same command to resume" in caught.value.__notes__


def test_a_shard_that_keeps_failing_fails_the_job_with_its_error_after_the_retries(http_server, tmp_path, capsys):
    rows = image_rows(http_server, "broken", 6)
    output = tmp_path / "out"
    (output / "00001.tar").mkdir(parents=True)  # shard 1 cannot be committed while this is in the way
    options = dict(input=str(write_input(rows, tmp_path, "parquet")), output_dir=str(output), shard_size=2,
                   allow_network=[LOOPBACK], executor="processes", workers=2)
    with pytest.raises(IsADirectoryError):
        mmdata.download(max_shard_retry=2, **options)
    printed = capsys.readouterr().err
    assert "1 shard(s) failed (00001: IsADirectoryError" in printed
    assert "running them again (1 of 2)" in printed and "running them again (2 of 2)" in printed
    assert layout.complete_shards(output) == ["00000", "00002"]  # the others went on
    assert hits(http_server, rows) == [1, 1, 3, 3, 1, 1]

    (output / "00001.tar").rmdir()
    manifest = mmdata.download(**options)  # a re-run resumes: only shard 1
    assert hits(http_server, rows) == [1, 1, 4, 4, 1, 1]
    assert manifest["totals"]["successes"] == 6


def test_ignore_ssl_certificate_accepts_an_untrusted_certificate_only_when_asked(https_server):
    url = https_server.url("/img/ignored-certificate.jpg")  # self-signed, and not naming 127.0.0.1
    policy = dict(allowed_networks=(LOOPBACK,), retries=0, timeout=5.0)
    refused = Fetcher(FetchPolicy(**policy)).fetch(url)
    assert (refused.status, refused.error_class) == ("failed_to_download", "tls_error")
    accepted = Fetcher(FetchPolicy(**policy, ignore_ssl_certificate=True)).fetch(url)
    assert accepted.status == "success" and accepted.body == image_bytes("ignored-certificate")


class _StandInWandb(types.ModuleType):
    """Records what the job hands W&B: the runs, their config, what each logged, their summaries."""

    def __init__(self):
        super().__init__("wandb")
        self.runs: list[types.SimpleNamespace] = []

    def init(self, *, project, config, job_type):
        run = types.SimpleNamespace(project=project, config=config, job_type=job_type, logged=[], summary={},
                                    exit_code=None)
        run.log = run.logged.append
        run.finish = lambda exit_code=0: setattr(run, "exit_code", exit_code)
        self.runs.append(run)
        return run


def test_enable_wandb_logs_each_shard_and_the_totals(http_server, tmp_path, monkeypatch):
    wandb = _StandInWandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    rows = image_rows(http_server, "wandb", 5)
    manifest = mmdata.download(url_list=str(url_list(rows, tmp_path)), output_folder=str(tmp_path / "out"),
                               output_format="webdataset", enable_wandb=True, number_sample_per_shard=2,
                               allow_network=[LOOPBACK], executor="inline")
    (run,) = wandb.runs
    assert run.project == "img2dataset" and run.exit_code == 0  # img2dataset's project name by default
    assert run.config["threads"] == 256 and run.config["shard_size"] == 2
    assert sorted(entry["shard"] for entry in run.logged) == [0, 1, 2]
    assert run.logged[-1]["samples"] == 5 and run.logged[-1]["shards_done"] == 3
    assert run.summary["successes"] == manifest["totals"]["successes"] == 5
    assert run.summary["status/success"] == 5
