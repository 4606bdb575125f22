"""MetaCLIP-style balancing's per-entry table: ``DIR/balance/<view>.entry_counts.parquet``.

One row per entry of the entry list (blank lines and repeats dropped), in list order: how many
samples of the pool match it, the keep probability that gives it, and how many of the kept samples
(the view ``<view>``) match it. It lives outside ``annotations/`` (keyed by entry, not by sample)
and outside ``views/`` (it is not a view). :data:`BALANCE_KEY` holds the run's settings and totals
as JSON, in this table's schema metadata and in the view's.
"""

import pyarrow as pa

BALANCE_KEY = b"mmdata.balance"

ENTRY_COUNTS_SCHEMA = pa.schema(
    [
        pa.field("entry_id", pa.int32(), nullable=False),  # position in the cleaned entry list
        pa.field("entry", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),  # pool samples whose caption matches the entry
        pa.field("probability", pa.float64(), nullable=False),  # min(1, t / count): each match's keep draw
        pa.field("kept", pa.int64(), nullable=False),  # kept samples whose caption matches the entry
    ],
    metadata={"mmdata.schema": "balance.entry_counts/1"},
)
