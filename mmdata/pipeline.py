"""``mmdata run PIPELINE``: run a YAML list of stages in order, skipping those whose outputs are complete.

A pipeline file is::

    vars: {data: data/cc3m}             # ${data} anywhere below; --set data=... overrides
    stages:
      - stage: download                 # a name from STAGES
        with: {input: cc3m.tsv, output_dir: "${data}"}

Every stage is resumable on its own (the library functions skip complete shards); the runner also
skips a whole stage when its completion marker exists, so re-running the same command after a
failure picks up where it stopped. The stages that run tasks share one executor, opened when the
first of them runs; a stage whose ``with:`` names ``executor``/``workers``/``ray_address`` gets its own.
Datasets and outputs may be URLs (``s3://bucket/ds``): they are passed to the stages as written, and a
stage's ``storage_options`` serve its completion check too.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from mmdata import layout
from mmdata.execution import EXECUTION_OPTIONS, ExecutionConfig, Executor, open_executor

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PipelineError(RuntimeError):
    """A stage failed; the message names it and the command that resumes the run."""


@dataclass(frozen=True)
class Stage:
    """How to run one kind of stage and how to tell, without running it, that its outputs are complete."""

    run: Callable[..., Any]
    is_complete: Callable[..., bool] | None = None  # None: always run (cheap, or resumable inside)
    uses_executor: bool = False  # run takes execution=
    context: bool = False  # run returns a context manager kept open until the pipeline ends (a server)


def _download(**options):
    import mmdata

    return mmdata.download(**options)


def _score(**options):
    import mmdata

    return mmdata.score(**options)


def _score_complete(*, dataset: str, model: str, pretrained: str | None = None,
                    storage_options: dict | None = None, **_) -> bool:
    """Every complete shard has its score table for this model."""
    from mmdata.score.model import resolve_model

    root = layout.dataset(dataset, storage_options)
    scored = set(layout.model_dir(root, resolve_model(model, pretrained).model_id).names(".parquet"))
    shards = layout.complete_shards(root)
    return bool(shards) and layout.manifest_path(root).exists() and all(f"{shard}.parquet" in scored
                                                                        for shard in shards)


def _manifest_written(folder: str, storage_options: dict | None = None) -> bool:
    return layout.manifest_path(layout.dataset(folder, storage_options)).exists()


def _dedup_complete(*, dataset: str, storage_options: dict | None = None, **_) -> bool:
    return (layout.annotations_dir(layout.dataset(dataset, storage_options)) / "dedup.parquet").exists()


def _filter_complete(*, dataset: str, view: str, storage_options: dict | None = None, **_) -> bool:
    return (layout.views_dir(layout.dataset(dataset, storage_options)) / f"{view}.parquet").exists()


def _annotate(*, dataset: str, **options):
    import mmdata

    return mmdata.annotate(dataset, **options)


def _balance(*, dataset: str, **options):
    import mmdata

    return mmdata.balance(dataset, **options)


def _dedup(*, dataset: str, **options):
    import mmdata

    return mmdata.dedup(dataset, **options)


def _filter(*, dataset: str, **options):
    import mmdata

    return mmdata.write_view(dataset, **options)  # not the view itself: a pipeline's results stay small


def _reshard(*, dataset: str, **options):
    import mmdata

    return mmdata.reshard(dataset, **options)


def _report(*, dataset: str, **options):
    from mmdata.report.html import write_report

    return write_report(dataset, **options)


def _demo(name: str) -> Callable[..., Any]:
    def run(**options):
        from mmdata import demo

        return getattr(demo, name)(**options)

    run.__name__ = name
    return run


def _demo_complete(name: str) -> Callable[..., bool]:
    def is_complete(**options) -> bool:
        from mmdata import demo

        return getattr(demo, name)(**options)

    return is_complete


STAGES: dict[str, Stage] = {
    # img2dataset's spelling (output_folder, default "images") works in a pipeline too
    "download": Stage(_download, lambda *, output_dir=None, output_folder="images", storage_options=None, **_:
                      _manifest_written(output_dir or output_folder, storage_options), uses_executor=True),
    "score": Stage(_score, _score_complete, uses_executor=True),
    "annotate": Stage(_annotate, uses_executor=True),  # skips the shards it annotated already
    "dedup": Stage(_dedup, _dedup_complete, uses_executor=True),
    "filter": Stage(_filter, _filter_complete),
    "balance": Stage(_balance, lambda *, view="balanced", **options: _filter_complete(view=view, **options),
                     uses_executor=True),
    "reshard": Stage(_reshard, lambda *, output, storage_options=None, **_: _manifest_written(
        output, storage_options), uses_executor=True),
    "report": Stage(_report),
    # The offline demo's own stages (mmdata.demo): the synthetic web, the filter network, the scorecard.
    "synthetic": Stage(_demo("make_corpus"), _demo_complete("corpus_complete")),
    "serve": Stage(_demo("serve_corpus_stage"), _demo_complete("serve_complete"), context=True),
    "train": Stage(_demo("train_stage"), _demo_complete("train_complete")),
    "seed_view": Stage(_demo("seed_view"), _demo_complete("seed_view_complete")),
    "evaluate": Stage(_demo("evaluate")),
}


@dataclass
class StageResult:
    index: int
    stage: str
    status: str  # "ran" | "skipped"
    seconds: float
    result: Any = None


def load_pipeline(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> list[dict]:
    """Read a pipeline file, substitute ``${var}`` from its ``vars`` (``overrides`` win), and check it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pipeline file at {path}; see pipelines/ for examples")
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, dict) or not isinstance(document.get("stages"), list):
        raise ValueError(f"{path}: a pipeline is a mapping with a 'stages' list")
    variables = dict(document.get("vars") or {})
    unknown = set(overrides or {}) - set(variables)
    if unknown:
        raise ValueError(f"--set {sorted(unknown)}: not in the pipeline's vars {sorted(variables)}")
    variables.update(overrides or {})
    stages = []
    for index, entry in enumerate(document["stages"]):
        if not isinstance(entry, dict) or entry.get("stage") not in STAGES:
            name = entry.get("stage") if isinstance(entry, dict) else entry
            raise ValueError(f"{path}: stage {index} is {name!r}; known stages: {', '.join(STAGES)}")
        extra = set(entry) - {"stage", "with"}
        if extra:
            raise ValueError(f"{path}: stage {index} ({entry['stage']}) has unknown keys {sorted(extra)}; use 'with:'")
        options = _substitute(entry.get("with") or {}, variables, f"{path}: stage {index} ({entry['stage']})")
        stages.append({"stage": entry["stage"], "with": options})
    return stages


def run_pipeline(path: str | os.PathLike, *, overrides: dict[str, Any] | None = None,
                 resume_command: str | None = None, execution: ExecutionConfig | None = None,
                 **execution_options) -> list[StageResult]:
    """Run the stages of the pipeline at ``path`` in order; skip those already complete.

    ``execution`` (or the flat ``executor``/``workers``/``ray_address``): where the stages' tasks run,
    one executor for the whole pipeline. A failing stage raises :class:`PipelineError` naming the
    stage and ``resume_command`` (default: the equivalent ``mmdata run``).
    """
    execution = ExecutionConfig.from_options(execution_options) or execution or ExecutionConfig()
    if execution_options:
        raise ValueError(f"unknown run_pipeline options {sorted(execution_options)}")
    stages = load_pipeline(path, overrides)
    resume_command = resume_command or _command_for(path, overrides)
    results: list[StageResult] = []
    with contextlib.ExitStack() as scope:
        shared: list[Executor] = []  # opened by the first stage that runs tasks

        def executor() -> Executor:
            if not shared:
                shared.append(scope.enter_context(open_executor(execution)))
            return shared[0]

        for index, entry in enumerate(stages):
            name, options = entry["stage"], dict(entry["with"])
            stage = STAGES[name]
            label = f"[{index + 1}/{len(stages)}] {name}"
            if stage.is_complete is not None and _complete(stage, options):
                print(f"{label}: complete, skipped", flush=True)
                results.append(StageResult(index, name, "skipped", 0.0))
                continue
            print(f"{label}: running", flush=True)
            started = time.perf_counter()
            try:
                if stage.uses_executor and not any(option in options for option in EXECUTION_OPTIONS):
                    options["execution"] = executor()
                result = stage.run(**options)
                if stage.context:
                    result = scope.enter_context(result)
            except Exception as error:
                raise PipelineError(
                    f"stage {index + 1} ({name}) failed: {type(error).__name__}: {error}\n"
                    f"Fix the cause, then resume with the same command (complete stages are skipped):\n"
                    f"  {resume_command}"
                ) from error
            seconds = time.perf_counter() - started
            print(f"{label}: done in {seconds:.1f} s", flush=True)
            results.append(StageResult(index, name, "ran", seconds, result))
    return results


def _complete(stage: Stage, options: dict) -> bool:
    try:
        return bool(stage.is_complete(**options))
    except (TypeError, ValueError, FileNotFoundError):
        return False  # options the check cannot read: let the stage itself run and say what is wrong


def _substitute(value: Any, variables: dict[str, Any], where: str) -> Any:
    if isinstance(value, dict):
        return {key: _substitute(item, variables, where) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, variables, where) for item in value]
    if not isinstance(value, str):
        return value

    def lookup(name: str) -> Any:
        if name not in variables:
            raise ValueError(f"{where}: ${{{name}}} is not defined in vars")
        return variables[name]

    whole = _VARIABLE.fullmatch(value)
    if whole:
        return lookup(whole.group(1))  # keep the variable's type (numbers, lists)
    return _VARIABLE.sub(lambda match: str(lookup(match.group(1))), value)


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["data=/tmp/x", "threshold=0.3"]`` → typed values (YAML scalars)."""
    overrides = {}
    for assignment in assignments:
        name, equals, text = assignment.partition("=")
        if not equals or not name:
            raise ValueError(f"--set {assignment!r}: write it as key=value")
        overrides[name.strip()] = yaml.safe_load(text) if text else ""
    return overrides


def _command_for(path: str | os.PathLike, overrides: dict[str, Any] | None) -> str:
    sets = " ".join(f"--set {name}={value}" for name, value in (overrides or {}).items())
    return f"mmdata run {path} {sets}".rstrip()
