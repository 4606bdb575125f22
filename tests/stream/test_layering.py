"""The loader depends on formats and I/O only: no module of mmdata.stream imports a stage, the
executors or Ray (not even inside a function), its modules import one another without cycles, and
each imports on its own."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import mmdata

PACKAGE = Path(mmdata.__file__).parent
FORBIDDEN = ("mmdata.score", "mmdata.curate", "mmdata.download", "mmdata.execution", "mmdata.search", "ray")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (``from a import b``: ``a.b`` when
    ``b`` is a module of ours)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if module_path(candidate) is not None:
                    names.add(candidate)
    return names


def module_path(name: str) -> Path | None:
    if not name.startswith("mmdata."):
        return None
    relative = Path(*name.split(".")[1:])
    for path in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py"):
        if path.is_file():
            return path
    return None


def stream_modules() -> dict[str, set[str]]:
    folder = PACKAGE / "stream"
    return {f"mmdata.stream.{path.stem}": imported_modules(path) for path in sorted(folder.glob("*.py"))}


def test_stream_and_table_import_no_stage_executor_or_ray():
    graph = {**stream_modules(), "mmdata.table": imported_modules(PACKAGE / "table.py")}
    offending = {module: sorted(name for name in imports if name.startswith(FORBIDDEN))
                 for module, imports in graph.items()}
    assert {module: names for module, names in offending.items() if names} == {}


def test_stream_modules_have_no_import_cycle():
    graph = {module: {name for name in imports if name.startswith("mmdata.stream.")}
             for module, imports in stream_modules().items()}
    visiting, done = [], set()

    def visit(module):
        assert module not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(module):] + [module])}"
        if module in done:
            return
        visiting.append(module)
        for name in graph.get(module, ()):
            visit(name)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)


CHILD = """
import importlib, json, sys
loaded = {}
for name in sys.argv[1:]:
    for module in [m for m in sys.modules if m == "mmdata" or m.startswith("mmdata.")]:
        del sys.modules[module]
    importlib.import_module(name)
    loaded[name] = sorted(m for m in sys.modules if m.startswith(("mmdata.", "ray")))
print(json.dumps(loaded))
"""


def test_each_module_imports_alone_without_stages():
    names = [*stream_modules(), "mmdata.table"]
    child = subprocess.run([sys.executable, "-c", CHILD, *names], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    loaded = json.loads(child.stdout.strip().splitlines()[-1])
    assert set(loaded) == set(names)
    pulled_in = {name: [m for m in modules if m.startswith(FORBIDDEN)] for name, modules in loaded.items()}
    assert {name: modules for name, modules in pulled_in.items() if modules} == {}
