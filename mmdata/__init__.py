"""mmdata: curate image-text pretraining data (download → score → filter/dedup → stream).

Attributes are imported on first use, so ``import mmdata`` stays cheap and a training job that only
streams never imports Ray.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (or the callable stage package of that name)
_EXPORTS = {
    "download": "mmdata.download",
    "DownloadConfig": "mmdata.download.config",
    "score": "mmdata.score",
    "ScoreConfig": "mmdata.score.config",
    "read_table": "mmdata.table",
    "read_embeddings": "mmdata.table",
    "iter_embeddings": "mmdata.table",
    "write_table": "mmdata.table",
    "JoinedShards": "mmdata.table",
    "filter_view": "mmdata.curate.view",
    "write_view": "mmdata.curate.view",
    "read_view": "mmdata.curate.view",
    "dedup": "mmdata.curate.dedup",
    "decontaminate": "mmdata.curate.decontaminate",
    "annotate": "mmdata.curate.annotate",
    "balance": "mmdata.curate.balance",
    "reshard": "mmdata.curate.reshard",
    "stream": "mmdata.stream",
    "build_index": "mmdata.search.index",
    "search": "mmdata.search",
    "write_report": "mmdata.report.html",
    "run_pipeline": "mmdata.pipeline",
}


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'mmdata' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    # A stage package (mmdata.download, ...) is itself callable as the stage: see mmdata._callable.
    value = module if module_name == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
