"""Per-shard image hash caches: ``DIR/annotations/.hashes/<shard>.parquet``, one row per stored sample.

Written and read by :mod:`mmdata.curate.hashes` (which explains each hash). The cache of another
:data:`HASH_VERSION` is recomputed, so bump it whenever a hash or a width below changes.
"""

import pyarrow as pa

HASH_VERSION = "6"
CROP_COUNT = 9  # pHashes of the 95% crops: three offsets per axis
THUMB_BYTES = 16 * 16 * 3 + 17 * 17 * 3  # the content at 16×16 then 17×17 RGB (uint8)

HASH_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("pixel_hash", pa.string()),
        pa.field("phash", pa.uint64()),
        pa.field("crop_hashes", pa.list_(pa.uint64(), CROP_COUNT)),
        pa.field("mirror_phash", pa.uint64()),  # the pHash of the picture flipped left to right
        pa.field("colour_moments", pa.list_(pa.float32(), 6)),  # RGB means, then RGB standard deviations
        pa.field("thumbnails", pa.binary(THUMB_BYTES)),
        pa.field("texture", pa.float32()),
        pa.field("aspect", pa.float32()),  # log(width / height) of the content
        pa.field("hash_error", pa.string()),  # why the hashes are null (no image member, undecodable)
    ],
    metadata={"mmdata.schema": "hashes/1", "mmdata.hash_version": HASH_VERSION},
)
