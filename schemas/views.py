"""Views: ``DIR/views/<name>.parquet``, the samples a filter selected, with what a loader needs to
read them without scanning (shard name and byte range). The rules and the per-rule funnel travel as
JSON in the schema metadata."""

import pyarrow as pa

RULES_KEY = b"mmdata.view.rules"
FUNNEL_KEY = b"mmdata.view.funnel"

VIEW_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("uid", pa.string()),
        pa.field("shard", pa.string(), nullable=False),  # "00000": the shard's file stem
        pa.field("tar_offset", pa.int64()),
        pa.field("tar_size", pa.int64()),
    ],
    metadata={"mmdata.schema": "views/1"},
)
