"""``mmdata report DIR -o report.html``: the curation report as one self-contained HTML file."""

from __future__ import annotations

from mmdata.cli._defaults import defaults_from
from mmdata.cli._flags import add_storage_flag, given, storage_options


def register(subparsers) -> None:
    parser = subparsers.add_parser("report", help="write a self-contained HTML report of a dataset's curation",
                                   formatter_class=defaults_from("mmdata.report.html:write_report"))
    parser.add_argument("dataset", help="dataset folder or URL (the --output of mmdata download)")
    parser.add_argument("-o", "--output", default="report.html",
                        help="HTML file (a path or URL) to write (default: report.html)")
    parser.add_argument("--view", help="view whose clip-score threshold to draw (default: the first with a score rule)")
    parser.add_argument("--grid-size", type=int, help="samples in each threshold grid (default %(library_default)s)")
    add_storage_flag(parser)
    parser.set_defaults(handler=_run)


def _run(arguments) -> int:
    from mmdata.report.html import write_report

    path = write_report(arguments.dataset, arguments.output, **given(arguments, ("view", "grid_size")),
                        **storage_options(arguments))
    print(path)
    return 0
