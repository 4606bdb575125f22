"""Flags that several commands share, defined once so they mean the same everywhere."""

from __future__ import annotations

import argparse
import json

from mmdata.execution.config import EXECUTION_OPTIONS, EXECUTORS


def add_execution_flags(parser: argparse.ArgumentParser) -> None:
    """``--executor``, ``--workers``, ``--ray-address``: where the command's work runs."""
    group = parser.add_argument_group("execution")
    group.add_argument("--executor", choices=EXECUTORS,
                       help="ray (default: a local Ray started for the job, or --ray-address), processes "
                       "(a pool of local processes: fast start, one machine, no retries) or inline (this "
                       "process, one task at a time: debugging)")
    group.add_argument("--workers", type=int, metavar="N", help="tasks at once (default: the CPU count)")
    group.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster instead of starting a local one")


def add_storage_flag(parser: argparse.ArgumentParser) -> None:
    """``--storage-options JSON``: options for the fsspec filesystem of URL paths (``s3://...``)."""
    parser.add_argument("--storage-options", type=_json_object, metavar="JSON",
                        help="fsspec filesystem options for URL paths, e.g. '{\"anon\": true}' (credentials and "
                        "endpoints otherwise come from AWS_* variables, ~/.aws, GOOGLE_APPLICATION_CREDENTIALS)")


def storage_options(arguments: argparse.Namespace) -> dict:
    """``{"storage_options": ...}`` when the user gave ``--storage-options``, else nothing."""
    return given(arguments, ("storage_options",))


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"anon\": true}'")
    return value


def given(arguments: argparse.Namespace, names) -> dict:
    """The options among ``names`` that the user set (flags default to None), so the library's
    defaults live in one place."""
    return {name: getattr(arguments, name) for name in names if getattr(arguments, name, None) is not None}


def execution_options(arguments: argparse.Namespace) -> dict:
    return given(arguments, EXECUTION_OPTIONS)
