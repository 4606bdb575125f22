"""``mmdata run PIPELINE [--set key=value ...]``: run a pipeline file's stages in order, resumably."""

from __future__ import annotations

import shlex
import sys

from mmdata.cli._flags import add_execution_flags, execution_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run a pipeline file (pipelines/*.yaml), skipping complete stages",
        description="Run the stages of PIPELINE in order on one executor, skipping the stages already complete.",
    )
    parser.add_argument("pipeline", help="pipeline YAML file, e.g. pipelines/demo.yaml")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override one of the pipeline's vars (repeatable)")
    add_execution_flags(parser)
    parser.set_defaults(handler=_run)


def _run(arguments) -> int:
    from mmdata.pipeline import PipelineError, parse_overrides, run_pipeline

    resume = "mmdata " + " ".join(shlex.quote(part) for part in sys.argv[1:]) if sys.argv[1:2] == ["run"] else None
    try:
        run_pipeline(arguments.pipeline, overrides=parse_overrides(arguments.assignments),
                     resume_command=resume, **execution_options(arguments))
    except PipelineError as error:
        print(f"mmdata run: {error}", file=sys.stderr)
        return 1
    return 0
