"""Stage packages that are also the stage's function.

``mmdata.download`` (and ``score``, ``search``, ``stream``) names both a subpackage and the function
users call. Importing any submodule rebinds the attribute to the package, so the package is made
callable and forwards to the function: ``mmdata.download(...)`` works whichever the name holds.
"""

from __future__ import annotations

import importlib
import sys
import types


def make_package_callable(package_name: str, function_path: str) -> None:
    module_name, _, function_name = function_path.rpartition(".")

    class CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module(module_name), function_name)(*args, **kwargs)

    sys.modules[package_name].__class__ = CallablePackage
