"""mmdata: curate image-text pretraining data (download → score → filter/dedup → stream).

Attributes are imported on first use, so ``import mmdata`` stays cheap and a training job that only
streams never imports Ray.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "download": "mmdata.download.job",
    "DownloadConfig": "mmdata.download.config",
    "score": "mmdata.score.job",
    "ScoreConfig": "mmdata.score.config",
    "read_table": "mmdata.table",
    "read_embeddings": "mmdata.table",
    "filter_view": "mmdata.curate.view",
    "read_view": "mmdata.curate.view",
    "dedup": "mmdata.curate.dedup",
    "decontaminate": "mmdata.curate.decontaminate",
    "reshard": "mmdata.curate.reshard",
    "stream": "mmdata.stream.dataset",
    "build_index": "mmdata.search.index",
    "search": "mmdata.search.query",
    "write_report": "mmdata.report.html",
    "run_pipeline": "mmdata.pipeline",
}


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'mmdata' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    if name == "stream":
        # The mmdata.stream package is callable (it calls this function), so it can stand for both:
        # binding the function here would break `import mmdata.stream.loader` style imports.
        value = importlib.import_module("mmdata.stream")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
