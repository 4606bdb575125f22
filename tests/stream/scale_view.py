"""A view of a fraction of a (metadata-only) dataset's stored samples, written the way ``mmdata filter``
writes one: shard by shard, streamed, row groups of a million rows. ``bench/scale.py``'s loader stage
streams it; the sample is a hash of the key, so the view is the same whatever built it.

    python tests/stream/scale_view.py DATASET [--name loader30] [--fraction 0.3]
"""

from __future__ import annotations

import argparse
import os
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmdata import layout
from mmdata.atomic import parquet_writer
from mmdata.schemas.views import VIEW_SCHEMA


def add_view(root: str | os.PathLike, name: str = "loader30", fraction: float = 0.3) -> str:
    """Write ``views/NAME.parquet`` (``fraction`` of the stored samples) unless it exists; its path."""
    path = layout.views_dir(root) / f"{name}.parquet"
    if path.exists():
        return str(path)
    threshold = int(fraction * 2**32)
    with parquet_writer(path, VIEW_SCHEMA) as writer:
        for shard in layout.complete_shards(root):
            table = pq.read_table(layout.parquet_path(root, shard), columns=["key", "uid", "status", "tar_offset",
                                                                                "tar_size"])
            stored = table.filter(pc.equal(table.column("status"), "success"))
            keys = stored.column("key").to_pylist()
            drawn = np.array([zlib.crc32(key.encode()) for key in keys], dtype=np.uint64)
            kept = stored.filter(pa.array(drawn < threshold))
            writer.write(kept.append_column("shard", pa.array([shard] * kept.num_rows, pa.string())))
    return str(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--name", default="loader30")
    parser.add_argument("--fraction", type=float, default=0.3)
    arguments = parser.parse_args()
    print(add_view(arguments.dataset, arguments.name, arguments.fraction))
