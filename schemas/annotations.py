"""Per-sample columns that curation stages add: ``DIR/annotations/<stage>.parquet``, keyed by ``key``.

``mmdata.read_table`` left-joins every annotation table onto the download metadata.
"""

import pyarrow as pa

DEDUP_REASONS = ("exact", "near", "semantic")

# One row per sample that dedup looked at; duplicate_of is null for the samples kept. Rows with a
# duplicate_of are the explanation table: the kept twin, the tier, and the similarity
# (1.0 for exact, 1 - hamming/64 for near, the cosine for semantic).
DEDUP_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("duplicate_of", pa.string()),
        pa.field("dup_reason", pa.string()),
        pa.field("dup_similarity", pa.float32()),
    ],
    metadata={"mmdata.schema": "annotations.dedup/1"},
)

CONTAMINATION_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("contaminated", pa.bool_(), nullable=False),
        pa.field("contaminated_by", pa.string()),  # the evaluation image's name or key
        pa.field("contamination_reason", pa.string()),  # exact | near | embedding
    ],
    metadata={"mmdata.schema": "annotations.contamination/1"},
)
