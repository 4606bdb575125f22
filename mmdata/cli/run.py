"""``mmdata run PIPELINE [--set key=value ...]``: run a pipeline file's stages in order, resumably."""

from __future__ import annotations

import shlex
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run a pipeline file (pipelines/*.yaml), skipping complete stages")
    parser.add_argument("pipeline", help="pipeline YAML file, e.g. pipelines/demo.yaml")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override one of the pipeline's vars (repeatable)")
    parser.add_argument("--ray-address", help="run the Ray stages on this cluster instead of a local Ray")
    parser.set_defaults(handler=_run)


def _run(arguments) -> int:
    from mmdata.pipeline import PipelineError, parse_overrides, run_pipeline

    resume = "mmdata " + " ".join(shlex.quote(part) for part in sys.argv[1:]) if sys.argv[1:2] == ["run"] else None
    try:
        run_pipeline(arguments.pipeline, overrides=parse_overrides(arguments.assignments),
                     resume_command=resume, ray_address=arguments.ray_address)
    except PipelineError as error:
        print(f"mmdata run: {error}", file=sys.stderr)
        return 1
    return 0
