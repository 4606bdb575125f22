"""img2dataset's options for ``mmdata download``: every parameter of ``img2dataset.download`` (1.47.0,
and ``ignore_ssl_certificate`` from its main branch), its default there, and what it becomes here.
The one place that maps img2dataset's names and values onto mmdata's, so the command line, Python
callers and pipelines accept the same img2dataset calls.

A call that names ``url_list`` or ``output_folder`` is an *img2dataset call*: the options it leaves
out take img2dataset's defaults (256 threads, one process, no caption column, no retries, ...), so it
produces what img2dataset would, in img2dataset's layout. Any other call keeps mmdata's defaults and
may still use img2dataset's names. Nothing is dropped: an option either acts as in img2dataset, is
refused with a message naming it, or (``subjob_size``) prints why it has no effect here.

Importing this module imports no stage: the command line builds its flags from :data:`OPTIONS`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable

_REQUIRED = object()
# What an img2dataset call leaves to mmdata's own default, where both mean the same thing.
_MMDATA_DEFAULT = object()


@dataclass(frozen=True)
class Option:
    """One parameter of ``img2dataset.download``: ``kind`` is the value it takes (bool, int, float,
    text, name (text or None), path, names (a list)); ``default`` is img2dataset's; ``call_default``
    is what an img2dataset call that leaves it out gets here; ``status`` says what it does in mmdata."""

    kind: str
    default: Any
    status: str
    call_default: Any = _REQUIRED

    @property
    def filled(self) -> Any:
        return self.default if self.call_default is _REQUIRED else self.call_default

    @property
    def help(self) -> str:
        """What it does here, and img2dataset's default (for ``--help``)."""
        return self.status if self.default is _REQUIRED else f"{self.status}; img2dataset default {self.default}"


OPTIONS: dict[str, Option] = {
    "url_list": Option("path", _REQUIRED, "mapped to INPUT (the positional input)", _MMDATA_DEFAULT),
    "image_size": Option("int", 256, "same"),
    "output_folder": Option("path", "images", "mapped to --output"),
    "processes_count": Option("int", 1, "mapped to --workers"),
    "resize_mode": Option("text", "border", "same"),
    "resize_only_if_bigger": Option("bool", False, "resize only images larger than image_size"),
    "upscale_interpolation": Option("text", "lanczos", "resampling filter when enlarging"),
    "downscale_interpolation": Option("text", "area", "resampling filter when shrinking"),
    "encode_quality": Option("int", 95, "same"),
    "encode_format": Option("text", "jpg", "same"),
    "skip_reencode": Option("bool", False, "same"),
    "output_format": Option("text", "files", "webdataset only (the layout mmdata writes); others refused",
                            _MMDATA_DEFAULT),
    "input_format": Option("text", "txt", "same values; "
                           "not given: from the file extension, else txt", _MMDATA_DEFAULT),
    "url_col": Option("text", "url", "same"),
    "caption_col": Option("name", None, "same"),
    "bbox_col": Option("name", None, "column of [x0, y0, x1, y1] boxes (0..1) to blur, e.g. faces"),
    "thread_count": Option("int", 256, "mapped to --threads"),
    "number_sample_per_shard": Option("int", 10_000, "mapped to --shard-size"),
    "extract_exif": Option("bool", True, "keep the image's EXIF in the metadata"),
    "save_additional_columns": Option("names", None, "same", _MMDATA_DEFAULT),
    "timeout": Option("float", 10.0, "same (a deadline for the whole request)"),
    "enable_wandb": Option("bool", False, "log the job to Weights & Biases (needs the wandb package)"),
    "wandb_project": Option("text", "img2dataset", "the W&B project of enable_wandb"),
    "oom_shard_count": Option("int", 5, "mapped to --shard-digits (not given: 5, or more when the input needs "
                              "them)", _MMDATA_DEFAULT),
    "compute_hash": Option("name", "sha256", "hash of the downloaded bytes to store: md5, sha256, sha512 or None"),
    "verify_hash": Option("names", None, "[column, hash type]: refuse images whose hash differs from the "
                          "column's", _MMDATA_DEFAULT),
    "distributor": Option("text", "multiprocessing", "mapped to --executor: multiprocessing=processes, ray=ray; "
                          "pyspark refused"),
    "subjob_size": Option("int", 1000, "no effect (printed): shards go to the executor one at a time",
                          _MMDATA_DEFAULT),
    "retries": Option("int", 0, "same (transient failures, with backoff)"),
    "disable_all_reencoding": Option("bool", False, "store the downloaded bytes as they are: no decode, no resize"),
    "min_image_size": Option("int", 0, "same"),
    "max_image_area": Option("float", math.inf, "refuse images of more pixels than this"),
    "max_aspect_ratio": Option("float", math.inf, "same"),
    "incremental_mode": Option("text", "incremental", "incremental=resume, overwrite=remove the output first; "
                               "extend refused"),
    "max_shard_retry": Option("int", 1, "run a failed shard again this many times, once the others are done"),
    "user_agent_token": Option("name", None, "same", _MMDATA_DEFAULT),
    "disallowed_header_directives": Option("names", None, "same ('[]' honours none)", _MMDATA_DEFAULT),
    "ignore_ssl_certificate": Option("bool", False, "accept any HTTPS certificate, unverified"),
}
# img2dataset's names for mmdata options of another name.
RENAMED = {
    "url_list": "input",
    "output_folder": "output_dir",
    "processes_count": "workers",
    "thread_count": "threads",
    "number_sample_per_shard": "shard_size",
    "oom_shard_count": "shard_digits",
    "distributor": "executor",
}
# mmdata options whose command-line value may also be written the way python-fire reads it.
EXTRA_FIRE_OPTIONS = {"allow_network": "names"}

_INPUT_FORMATS = {"txt": "txt", "txt.gz": "txt", "csv": "csv", "csv.gz": "csv", "tsv": "tsv", "tsv.gz": "tsv",
                  "jsonl": "jsonl", "jsonl.gz": "jsonl", "json": "json", "json.gz": "json", "parquet": "parquet"}
_KNOWN_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".txt")
_DISTRIBUTORS = {"multiprocessing": "processes", "ray": "ray"}
_UNWRITTEN_FORMATS = ("files", "parquet", "tfrecord", "dummy")


def is_img2dataset_call(options: dict) -> bool:
    """Whether ``options`` name img2dataset's input or output: then img2dataset's defaults apply."""
    return "url_list" in options or "output_folder" in options


def translate(options: dict) -> tuple[dict, list[str]]:
    """mmdata's options from ``options`` that may use img2dataset's names and values, and the notes
    to print about options that have no effect here. Raises ValueError naming a refused option."""
    given = dict(options)
    notes: list[str] = []
    if is_img2dataset_call(given):
        _fill_img2dataset_defaults(given, notes)
    translated: dict = {}
    spelled: dict[str, str] = {}  # mmdata name -> the name the caller used for it
    for name, value in given.items():
        option = OPTIONS.get(name)
        kind = option.kind if option else EXTRA_FIRE_OPTIONS.get(name)
        if kind is not None:
            value = _checked(name, kind, value)
        rule = _RULES.get(name)
        produced = rule(value, notes) if rule else {RENAMED.get(name, name): value}
        for target, target_value in produced.items():
            if target in spelled:
                first, second = sorted((spelled[target], name))
                raise ValueError(f"{first} and {second} both set {target}: pass one of them")
            spelled[target] = name
            translated[target] = target_value
    return translated, notes


def _fill_img2dataset_defaults(given: dict, notes: list[str]) -> None:
    """Give an img2dataset call img2dataset's defaults for what it leaves out (under either name)."""
    for name, option in OPTIONS.items():
        if name in given or RENAMED.get(name, name) in given or option.call_default is _MMDATA_DEFAULT:
            continue
        if name == "distributor" and {"executor", "ray_address"} & set(given):
            continue
        given[name] = option.filled
    if "output_format" not in given:
        notes.append("output_format: img2dataset's default is 'files' (a folder of images per shard); mmdata writes "
                     "webdataset shards (DIR/00000.tar, .parquet, _stats.json). Pass output_format='webdataset' to "
                     "say so and drop this note.")
    source = given.get("url_list", given.get("input"))
    if "input_format" not in given and source is not None and not _has_known_suffix(source):
        given["input_format"] = "txt"  # img2dataset reads an input of no known extension as a text file


def _has_known_suffix(source) -> bool:
    name = PurePosixPath(os.fspath(source).rstrip("/")).name.lower()
    return name.removesuffix(".gz").endswith(_KNOWN_SUFFIXES)


def _checked(name: str, kind: str, value):
    """``value`` as option ``name`` takes it, or a ValueError that names the option and what it takes."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and whole:
        return value
    if kind == "float" and (whole or isinstance(value, float)):
        return float(value)
    if kind == "float" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind in ("text", "name") and isinstance(value, str):
        return value
    if kind == "name" and value is None:
        return None
    if kind == "path" and (isinstance(value, (str, os.PathLike)) or whole):
        return value if not whole else str(value)
    if kind == "names":
        if value is None or isinstance(value, (list, tuple)):
            return value
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
    wanted = {"bool": "True or False", "int": "a whole number", "float": "a number", "text": "a text value",
              "name": "a name or None", "path": "a path or URL",
              "names": "a list of names, e.g. a,b or '[\"a\",\"b\"]'"}
    raise ValueError(f"{name} takes {wanted[kind]}, got {value!r}")


def _distributor(value: str, notes: list[str]) -> dict:
    if value == "pyspark":
        raise ValueError("distributor='pyspark' is not supported: mmdata runs shards on Ray "
                         "(distributor='ray' or --executor ray; --ray-address joins a cluster of many machines) or "
                         "on local processes (distributor='multiprocessing')")
    if value not in _DISTRIBUTORS:
        raise ValueError(f"distributor must be multiprocessing or ray, got {value!r}")
    return {"executor": _DISTRIBUTORS[value]}


def _input_format(value: str, notes: list[str]) -> dict:
    if value not in _INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {', '.join(_INPUT_FORMATS)}, got {value!r}")
    return {"input_format": _INPUT_FORMATS[value]}


def _output_format(value: str, notes: list[str]) -> dict:
    if value != "webdataset":
        what = "is not written by mmdata" if value in _UNWRITTEN_FORMATS else "is unknown"
        raise ValueError(f"output_format={value!r} {what}: mmdata writes webdataset shards (DIR/00000.tar with "
                         "DIR/00000.parquet metadata); pass output_format='webdataset'")
    return {}


def _subjob_size(value: int, notes: list[str]) -> dict:
    notes.append(f"subjob_size={value} has no effect: mmdata hands shards to its executor one at a time as "
                 "workers free up, so there are no subjobs to size.")
    return {}


def _optional_names(target: str) -> Callable[[Any, list[str]], dict]:
    """A list option whose None means "the default": left out, so the default lives in one place."""

    def rule(value, notes: list[str]) -> dict:
        return {} if value is None else {target: tuple(value)}

    return rule


_RULES: dict[str, Callable[[Any, list[str]], dict]] = {
    "distributor": _distributor,
    "input_format": _input_format,
    "output_format": _output_format,
    "subjob_size": _subjob_size,
    "save_additional_columns": _optional_names("save_additional_columns"),
    "disallowed_header_directives": _optional_names("disallowed_header_directives"),
    "verify_hash": _optional_names("verify_hash"),
}
