"""The member index: each stored sample's byte range in its tar (``tar_offset`` of its first header,
``tar_size`` to the end of its last member), so that a loader reads a sample with one ranged read.
Built by scanning a tar that has no offsets in its metadata, and cached."""

import pyarrow as pa

MEMBER_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("tar_offset", pa.int64(), nullable=False),
        pa.field("tar_size", pa.int64(), nullable=False),
    ],
    metadata={"mmdata.schema": "stream.members/1"},
)
