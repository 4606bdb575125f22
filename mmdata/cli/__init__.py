"""The ``mmdata`` command. It holds no logic: each subcommand module in this package turns its
arguments into a config and calls one library function.

A subcommand module defines ``register(subparsers)``, which adds its parser and sets ``handler`` to a
function taking the parsed arguments. Modules import heavy libraries inside the handler, so
``mmdata --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from mmdata import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmdata", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mmdata {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        return arguments.handler(arguments) or 0
    except (ValueError, FileNotFoundError) as error:
        print(f"mmdata {arguments.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
