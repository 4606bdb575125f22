"""One shard writer as its own process: ``python shard_child.py SPEC.json`` runs ``download_shard``
for ``spec["shard"]`` of the job ``spec["options"]`` (the rows the job would give that shard) and
prints ``RESULT <stats>`` with the stats it returned."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from mmdata.download.config import DownloadConfig
from mmdata.download.inputs import iter_input_shards
from mmdata.download.worker import download_shard

if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    config = DownloadConfig.from_options(**spec["options"])
    rows = next(itertools.islice(iter_input_shards(config.input, config.shard_size), spec["shard"], None))
    print("STARTED", flush=True)
    stats = download_shard(config, spec["shard"], rows)
    print("RESULT " + json.dumps(stats, default=str), flush=True)
