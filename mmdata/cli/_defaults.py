"""Help texts that show a library default, read from the library when the help is printed: the
default lives in one place, and building the parser (every command, ``mmdata --help``) imports no stage.

A flag's help writes ``%(library_default)s`` where the value goes; the command's parser is made with
``formatter_class=defaults_from("module:Owner", ...)``, each owner a config dataclass or a function.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
from typing import Any

MARKER = "%(library_default)s"


def defaults_from(*owners: str) -> type[argparse.HelpFormatter]:
    """A help formatter that fills :data:`MARKER` with the default of the option named like the flag's
    ``dest`` on the first owner that has one."""

    class LibraryDefaults(argparse.HelpFormatter):
        def _get_help_string(self, action: argparse.Action) -> str:
            text = super()._get_help_string(action)
            if not text or MARKER not in text:
                return text
            shown = _shown(library_default(owners, action.dest))
            return text.replace(MARKER, shown.replace("%", "%%"))

    return LibraryDefaults


def library_default(owners: tuple[str, ...], name: str) -> Any:
    """The default of option ``name`` on the first of ``owners`` ("module:Name") that declares one."""
    for owner in owners:
        module_name, _, attribute = owner.partition(":")
        target = getattr(importlib.import_module(module_name), attribute)
        if dataclasses.is_dataclass(target):
            for field in dataclasses.fields(target):
                if field.name == name and field.default is not dataclasses.MISSING:
                    return field.default
        else:
            parameter = inspect.signature(target).parameters.get(name)
            if parameter is not None and parameter.default is not inspect.Parameter.empty:
                return parameter.default
    raise LookupError(f"no default for option {name!r} in {', '.join(owners)}")


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)
