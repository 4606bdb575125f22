"""Samples/s of mmdata.stream against webdataset.WebDataset, same shards, same PIL decode, one
process each (mmdata.stream also reads in one background thread; the ``no_prefetch_thread`` rows
turn that off): the whole dataset, and a 30% view (webdataset reads every sample and drops the rest
before decoding; mmdata.stream reads only the view's byte ranges).

    python bench/stream.py --quick          # 600 samples, a smoke run
    python bench/stream.py                  # 6000 samples of 256 px JPEGs in 6 shards
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from mmdata import layout
from mmdata.atomic import write_parquet
from mmdata.schemas.views import VIEW_SCHEMA
from mmdata.shard_output import shard_output


def synthetic_jpeg(rng: random.Random, size: int) -> bytes:
    """A photo-like 256 px JPEG (gradient, shapes, noise) of realistic size (~15-30 KB)."""
    gradient = np.linspace(0, 255, size, dtype=np.float32)
    base = np.stack([np.add.outer(gradient * rng.random(), gradient * rng.random()) / 2 for _ in range(3)], axis=-1)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 12, base.shape)
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randrange(8, size // 3)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def build(root: Path, samples: int, shard_size: int, image_size: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    keys = []
    for shard in range(-(-samples // shard_size)):
        with shard_output(root, shard) as output:
            rows = min(shard_size, samples - shard * shard_size)
            for row in range(rows):
                key = layout.sample_key(shard, row, shard_size)
                members = {
                    "jpg": synthetic_jpeg(rng, image_size), "txt": f"a photo number {key}".encode(), "json": b"{}"
                }
                output.add({"key": key, "uid": key, "caption": f"a photo number {key}", "status": "success"}, members)
                keys.append(key)
            output.commit({"count": rows})
    return keys


def write_view(root: Path, keys: list[str], fraction: float, seed: int = 0) -> set[str]:
    chosen = sorted(random.Random(seed).sample(keys, round(len(keys) * fraction)))
    table = pa.concat_tables(
        [pa.parquet.read_table(layout.parquet_path(root, s)) for s in layout.complete_shards(root)]
    )
    rows = table.filter(pa.compute.is_in(table.column("key"), pa.array(chosen)))
    rows = rows.append_column("shard", pa.array([k[: layout.SHARD_DIGITS] for k in rows.column("key").to_pylist()]))
    write_parquet(rows, layout.views_dir(root) / "sample30.parquet", VIEW_SCHEMA)
    return set(chosen)


def timed(make_iterable, repeats: int) -> tuple[float, int]:
    """Best samples/s over ``repeats`` passes (after one warm-up pass that fills the page cache)."""
    count = sum(1 for _ in make_iterable())
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(1 for _ in make_iterable())
        best = max(best, count / (time.perf_counter() - start))
    return best, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="600 samples, one timed pass")
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", default=None, help="dataset folder to build (or reuse) the shards in")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.shard_size, args.repeats = 600, 200, 1

    import webdataset as wds

    import mmdata

    root = Path(args.root or tempfile.mkdtemp(prefix="mmdata-bench-stream-"))
    if not layout.complete_shards(root):
        keys = build(root, args.samples, args.shard_size, args.image_size)
    else:
        keys = [
            k
            for s in layout.complete_shards(root)
            for k in pa.parquet.read_table(layout.parquet_path(root, s)).column("key").to_pylist()
        ]
    chosen = write_view(root, keys, 0.3)
    tars = [str(layout.tar_path(root, s)) for s in layout.complete_shards(root)]

    def wds_full():
        return wds.WebDataset(tars, shardshuffle=False, empty_check=False).decode("pil")

    def wds_view():
        return (
            wds.WebDataset(tars, shardshuffle=False, empty_check=False)
            .select(lambda s: s["__key__"] in chosen)
            .decode("pil")
        )

    results = {}
    results["webdataset_full"] = timed(wds_full, args.repeats)
    results["mmdata_full"] = timed(lambda: mmdata.stream(root, shuffle=False), args.repeats)
    results["mmdata_full_shuffled"] = timed(lambda: mmdata.stream(root, shuffle=True), args.repeats)
    import mmdata.stream.dataset as stream_dataset

    prefetch, stream_dataset.PREFETCH_RUNS = stream_dataset.PREFETCH_RUNS, 0
    results["mmdata_full_no_prefetch_thread"] = timed(lambda: mmdata.stream(root, shuffle=False), args.repeats)
    results["mmdata_view30_no_prefetch_thread"] = timed(
        lambda: mmdata.stream(root, view="sample30", shuffle=False), args.repeats
    )
    stream_dataset.PREFETCH_RUNS = prefetch
    results["webdataset_view30"] = timed(wds_view, args.repeats)
    results["mmdata_view30"] = timed(lambda: mmdata.stream(root, view="sample30", shuffle=False), args.repeats)
    results["mmdata_view30_shuffled"] = timed(lambda: mmdata.stream(root, view="sample30", shuffle=True), args.repeats)
    assert results["webdataset_full"][1] == results["mmdata_full"][1] == len(keys)
    assert results["webdataset_view30"][1] == results["mmdata_view30"][1] == len(chosen)
    report = {
        "quick": args.quick,
        "samples": len(keys),
        "view_samples": len(chosen),
        "image_size": args.image_size,
        "samples_per_s": {name: round(rate, 1) for name, (rate, _) in results.items()},
        "speedup_full": round(results["mmdata_full"][0] / results["webdataset_full"][0], 2),
        "speedup_view30": round(results["mmdata_view30"][0] / results["webdataset_view30"][0], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
