"""The row table of a vector index: ``DIR/index/<model_id>/<kind>/<version>/rows.parquet``, one row
per indexed vector in index id order, holding what a search hit shows and where the sample is."""

import pyarrow as pa

ROWS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("url", pa.string()),
        pa.field("tar_offset", pa.int64()),
        pa.field("tar_size", pa.int64()),
    ],
    metadata={"mmdata.schema": "index.rows/1"},
)
