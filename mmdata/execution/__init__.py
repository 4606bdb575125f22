"""The execution layer: every stage runs its work through one :class:`Executor`, chosen by one
:class:`ExecutionConfig` (``--executor ray|processes|inline``, ``--workers``, ``--ray-address``).

Stages never import ``ray``: only :mod:`mmdata.execution.ray` does, and only when a Ray executor is
opened. A stage takes ``execution=`` (a config to open for the stage, or an executor a caller such
as ``run_pipeline`` keeps open across stages) and enters :func:`using` only when it has work.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from mmdata.execution.base import Executor
from mmdata.execution.config import EXECUTION_OPTIONS, EXECUTORS, ExecutionConfig
from mmdata.execution.progress import StageProgress, interrupted_line
from mmdata.execution.signals import Interrupted, interrupts_raise

__all__ = [
    "EXECUTION_OPTIONS", "EXECUTORS", "ExecutionConfig", "Executor", "Interrupted", "StageProgress",
    "interrupted_line", "interrupts_raise", "open_executor", "sized", "using", "Execution",
]

Execution = ExecutionConfig | Executor | None


def open_executor(config: ExecutionConfig) -> Executor:
    """Start the executor ``config`` names; close it (or use it as a context manager) when done."""
    if config.executor == "ray":
        from mmdata.execution.ray import RayExecutor

        return RayExecutor(config)
    if config.executor == "processes":
        from mmdata.execution.processes import ProcessExecutor

        return ProcessExecutor(config)
    from mmdata.execution.inline import InlineExecutor

    return InlineExecutor(config)


@contextlib.contextmanager
def using(execution: Execution = None) -> Iterator[Executor]:
    """An open executor: ``execution`` itself when it is one (left open), else one opened from the
    config (default: a local Ray) and closed on leaving."""
    if isinstance(execution, Executor):
        yield execution
        return
    with open_executor(execution or ExecutionConfig()) as executor:
        yield executor


def sized(execution: Execution, tasks: int) -> Execution:
    """``execution``, or inline for a single task when no executor is open yet: starting a Ray or a
    pool for one task would cost more than the task."""
    if tasks <= 1 and not isinstance(execution, Executor):
        return ExecutionConfig(executor="inline")
    return execution
