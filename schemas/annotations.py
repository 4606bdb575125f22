"""Per-sample columns that curation stages add: ``DIR/annotations/<stage>.parquet``, keyed by ``key``.

``mmdata.read_table`` left-joins every annotation table onto the download metadata.
"""

import pyarrow as pa

DEDUP_REASONS = ("exact", "near", "semantic")
# dedup.parquet's schema-metadata key: its settings, counts and the semantic tier's check (JSON)
DEDUP_METADATA_KEY = b"mmdata.dedup"

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

# ``mmdata annotate`` tables: one row per metadata row of every complete shard (failed downloads
# included: their caption still has a language; their image columns are null). Each table is merged
# from per-shard parts under ``annotations/.<stage>/``; the version below is part of what a re-run
# compares, so bump it whenever a computation or a constant it uses changes.
LANGUAGE_VERSION = "1"
IMAGE_QUALITY_VERSION = "1"

LANGUAGE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        # fastText lid.176 label: an ISO 639 code ("en", "de", "zh", "als", ...); null for a null caption
        pa.field("caption_language", pa.string()),
        pa.field("caption_language_score", pa.float32()),  # the label's probability, 0-1
    ],
    metadata={"mmdata.schema": "annotations.language/1"},
)

IMAGE_QUALITY_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        # variance of the 4-neighbour Laplacian of the grey image resized to a 256-pixel shorter side
        # (mmdata.curate.image_quality): low = blurry; null without a decodable stored image
        pa.field("laplacian_variance", pa.float32()),
        # caption characters per 100 pixels of the image's shorter ORIGINAL side (the stored size when
        # the original is not recorded): len(caption) / (min(original_width, original_height) / 100)
        pa.field("caption_chars_per_100px", pa.float32()),
        pa.field("image_quality_error", pa.string()),  # why laplacian_variance is null for a stored sample
    ],
    metadata={"mmdata.schema": "annotations.image_quality/1"},
)
