"""Per-shard CLIP score tables: ``DIR/scores/<model_id>/<shard>.parquet``, one row per stored sample.

Provenance (model, pretrained tag or checkpoint sha256, image size, mean/std, tokenizer, context
length, open_clip version) travels in the schema metadata under ``mmdata.provenance`` as JSON.
"""

import json

import pyarrow as pa

PROVENANCE_KEY = b"mmdata.provenance"


def score_schema(embed_dim: int | None, provenance: dict | None = None) -> pa.Schema:
    """Schema for a score table; ``embed_dim=None`` when embeddings are not kept (``--no-embeddings``)."""
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("clip_score", pa.float32()),  # cosine of the L2-normalised embeddings; null on failure
        pa.field("score_error", pa.string()),  # why clip_score is null
    ]
    if embed_dim is not None:
        vector = pa.list_(pa.float16(), embed_dim)
        fields += [pa.field("image_embedding", vector), pa.field("text_embedding", vector)]
    metadata = {b"mmdata.schema": b"scores/1"}
    if provenance is not None:
        metadata[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True).encode()
    return pa.schema(fields, metadata=metadata)
