"""``mmdata balance DIR --metadata entries.txt [--t 20000] [--view balanced] [--from-view clean]``."""

from __future__ import annotations

import argparse

from mmdata.cli._defaults import defaults_from
from mmdata.cli._flags import add_execution_flags, add_storage_flag, execution_options, given, storage_options

_OPTIONS = ("metadata", "t", "view", "from_view", "seed")
_HEAD_ROWS = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "balance",
        help="MetaCLIP balancing: cap each entry's matched samples at about t, into a view",
        description="Match every caption against an entry list (case-sensitive whole-word substrings, as "
        "MetaCLIP), count the samples per entry, and keep each sample with probability min(1, t/count) per "
        "matched entry (kept if any entry keeps it); samples matching no entry are dropped. Writes "
        "DIR/views/VIEW.parquet (stream or reshard it like a filter view) and "
        "DIR/balance/VIEW.entry_counts.parquet. Balance last, after filter and dedup (--from-view).",
        formatter_class=defaults_from("mmdata.curate.balance:BalanceConfig", "mmdata.curate.balance:balance"),
    )
    parser.add_argument("dataset", help="dataset folder or URL (s3://bucket/ds)")
    parser.add_argument("--metadata", required=True, metavar="FILE",
                        help="entry list: one entry per line, or a JSON list of strings (MetaCLIP's metadata.json)")
    parser.add_argument("--t", type=int, help="per-entry cap (default %(library_default)s; MetaCLIP 2.5B: 170000)")
    parser.add_argument("--view", help="name of the view to write (default %(library_default)s)")
    parser.add_argument("--from-view", help="balance only this view's samples (e.g. the filtered, deduplicated one)")
    parser.add_argument("--seed", type=int, help="seed of the keep draws (default %(library_default)s)")
    add_execution_flags(parser)
    add_storage_flag(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.curate import balance as balancing
    from mmdata.curate.view import format_funnel

    result = balancing.balance(arguments.dataset, **given(arguments, _OPTIONS), **execution_options(arguments),
                               **storage_options(arguments))
    print(format_funnel(result.funnel))
    head = result.entry_counts.sort_by([("count", "descending")]).slice(0, _HEAD_ROWS)
    if head.num_rows:
        print(f"\n{'entry (largest counts)':<40}{'count':>12}{'kept':>12}")
        for entry, count, kept in zip(*(head.column(name).to_pylist() for name in ("entry", "count", "kept"))):
            print(f"{entry[:38]:<40}{count:>12,}{kept:>12,}")
    print(f"\nview of {result.rows:,} samples written to {result.path}; entry counts in {result.entry_counts_path}")
    return 0
