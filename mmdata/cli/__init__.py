"""The ``mmdata`` command. Each subcommand module here defines ``register(subparsers)``, which adds
its parser and sets ``handler`` to a function that turns the parsed arguments into a config and calls
one library function; modules starting with ``_`` hold shared flags. Heavy libraries are imported
inside the handlers, so ``mmdata --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import threading

from mmdata import __version__

DESCRIPTION = """Curate image-text pretraining data: download URL+caption tables into WebDataset
shards with Parquet metadata, CLIP-score every pair, mark duplicates, filter into
views, and stream the kept samples into PyTorch. Every stage resumes where it stopped."""
EPILOG = """the loop in five commands:
  mmdata download urls.parquet --output data         # shards, metadata, stats, manifest.json
  mmdata score data --model ViT-B-32 --pretrained CKPT
  mmdata dedup data --exact --near --semantic
  mmdata filter data --view train --min-clip-score 0.28 --drop-duplicates
  mmdata reshard data --view train --output data-train

work commands take --executor ray|processes|inline, --workers N and --ray-address ADDR.
'mmdata COMMAND --help' describes each command."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmdata", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mmdata {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mmdata.execution import signals

    arguments = build_parser().parse_args(argv)
    try:
        with signals.interrupts_raise():
            return arguments.handler(arguments) or 0
    except BaseException as error:
        if signals.received() is None:
            if isinstance(error, (ValueError, FileNotFoundError)):
                print(f"mmdata {arguments.command}: error: {error}", file=sys.stderr)
                return 2
            raise
        return _exit_interrupted(arguments.command, signals.received())


def _exit_interrupted(command: str, signum: int) -> int:
    """One line, then the exit code. What the executor started is stopped already; threads still
    blocked on the network (the inline executor's fetches) must not hold the exit up, so when such
    threads are left the process ends at once."""
    from mmdata.execution.progress import interrupted_line

    print(f"\nmmdata {command}: {interrupted_line()}", file=sys.stderr, flush=True)
    if any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
           if thread is not threading.main_thread()):
        sys.stdout.flush()
        os._exit(128 + signum)
    return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
