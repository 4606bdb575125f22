"""Per-shard download metadata: one row per input row, successes and failures alike.

Field names follow img2dataset (key, url, caption, status, error_message, width, height,
original_width, original_height, sha256) so tools written for its output keep working.
"""

import pyarrow as pa

# The closed set of statuses. Everything but "success" carries a non-empty error_message.
SUCCESS = "success"
STATUSES = (
    SUCCESS,
    "invalid_url",  # empty, malformed, or a scheme other than http/https: never opened
    "blocked",  # the address (or a redirect hop's) is loopback/private/reserved and not allowed
    "opted_out",  # X-Robots-Tag carried a disallowed directive (noai, noimageai, ...)
    "failed_to_download",  # network error, HTTP error, timeout, body over the byte cap
    "failed_to_decode",  # the body is not a decodable image (HTML, garbage, truncated, pixel bomb)
    "filtered",  # decoded but refused by a size or aspect-ratio rule
)

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_message", pa.string()),
        pa.field("error_class", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("sha256", pa.string()),
        pa.field("http_status", pa.int32()),
        pa.field("byte_count", pa.int64()),
        pa.field("image_format", pa.string()),
        # Byte range of this sample's members inside the shard's tar (header of the first member
        # to the end of the last), so a loader can read one sample with one ranged read.
        pa.field("tar_offset", pa.int64()),
        pa.field("tar_size", pa.int64()),
    ],
    metadata={"mmdata.schema": "samples/1"},
)
