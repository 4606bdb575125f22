"""How every stage takes its options: a frozen config dataclass, or the same options flat, plus
where its work runs (``execution=`` or the flat ``executor``/``workers``/``ray_address``).

One rule for all stages, so the CLI, ``run_pipeline`` and Python callers pass the same names, and
the defaults live once, in the config class.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from mmdata.execution.config import ExecutionConfig

Config = TypeVar("Config")


def config_from_options(config_class: type[Config], stage: str, options: dict[str, Any]) -> Config:
    """``config_class(**options)``, refusing unknown names with the list of known ones."""
    names = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"unknown {stage} option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return config_class(**options)


def stage_settings(config_class: type[Config], stage: str, config: Config | None, execution: Any,
                   options: dict[str, Any]) -> tuple[Config, Any]:
    """The stage's config and execution from what its caller passed (a config, or flat options)."""
    options = dict(options)
    execution = stage_execution(execution, options)
    if config is None:
        from_options = getattr(config_class, "from_options", None)
        config = from_options(**options) if from_options else config_from_options(config_class, stage, options)
    elif options:
        raise ValueError(f"pass either a {config_class.__name__} or keyword options, not both")
    return config, execution


def stage_execution(execution: Any, options: dict[str, Any]) -> Any:
    """``execution``, or the config the flat ``executor``/``workers``/``ray_address`` in ``options``
    make (taken out of ``options``); both at once is refused."""
    flat_execution = ExecutionConfig.from_options(options)
    if flat_execution is not None and execution is not None:
        raise ValueError("pass execution= or executor/workers/ray_address, not both")
    return flat_execution or execution
