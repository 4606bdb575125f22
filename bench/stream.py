"""Samples/s of mmdata.stream against the loaders image-text training jobs use, on the same 256 px
JPEG shards, each decoding to an RGB PIL image and to a uint8 tensor, in one process and in a torch
DataLoader with 2 workers, over the whole set and over a 30 % view.

Every measured pass is a fresh process: it imports first (torch, Pillow and its common plugins,
numpy, pyarrow with its pandas shim, the system's package) and reads what the harness hands it (the
view's indices for the peers), then starts the clock, builds the dataset (mmdata: catalog and member
index) and iterates it to the end. A second pass in the same process gives the warm ("later")
figure. Each round runs every cell once, the systems in a rotating order; the table gives medians
over rounds, and the load average.

systems   mmdata             mmdata.stream with its defaults: jpeg_decoder "auto" (Pillow's pixels for PIL
                             images, simplejpeg for tensors), decode threads (one per core up to 4 in one
                             process: 2 here; 1 per DataLoader worker)
          mmdata+simplejpeg  mmdata.stream(jpeg_decoder="simplejpeg"): simplejpeg for PIL images too
          webdataset         webdataset.WebDataset(...).decode("pil" | "torchrgb8")
          litdata            litdata.optimize -> litdata.StreamingDataset, raw JPEG bytes decoded in
                             __getitem__ (Pillow; tensors with torchvision.io.decode_jpeg, as LitData's
                             JPEG serializer does)
          mosaic             streaming.MDSWriter -> streaming.StreamingDataset, decoded as for litdata
          ray                ray.data.read_webdataset(decoder=None).map(Pillow decode in Ray tasks);
                             "1 process" = a 1-CPU local Ray, "2 workers" = 2 CPUs; ray.init is setup,
                             outside the clock (printed); no later pass
          transport          a ceiling, not a loader: a DataLoader with 2 workers yielding one image decoded
                             once per worker, as often as the set has samples (no reading, no decoding):
                             what the DataLoader's batching and transport alone allow (DataLoader cells only)
views     webdataset and Ray read everything and drop unselected samples before decoding; litdata and
          mosaic read the view's indices by random access (their best); mmdata reads the view's byte ranges
memory    peak PSS of the pass's whole process tree (workers included, shared pages counted once),
          sampled every 0.1 s in an extra, untimed round (the sampling slows a pass by 20-35 %)

The peers other than webdataset are optional: install them beside the venv (their pins clash with
ours, so without dependencies) with the command in PEERS_INSTALL; missing systems are skipped.

    python bench/stream.py --quick          # 600 samples, one round, one-process cells, no memory round
    python bench/stream.py                  # 3000 samples in 6 shards, a memory round, 5 timed rounds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from mmdata import layout
from mmdata.atomic import write_parquet
from mmdata.schemas.views import VIEW_SCHEMA
from mmdata.shard_output import shard_output

PEERS = Path(__file__).resolve().parent / "_work" / "peers"
PEERS_INSTALL = (
    f"python -m pip install --no-deps --target {PEERS} litdata==0.2.76 lightning-utilities==0.15.3 obstore==0.12.1 "
    "tifffile==2026.3.3 mosaicml-streaming==0.13.0 xxhash==3.8.2 zstd==1.5.7.2 brotli==1.2.1 python-snappy==0.7.3 "
    "cramjam==2.14.0 catalogue==2.0.10 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 "
    "simplejpeg==1.9.0"
)
SYSTEMS = ("mmdata", "mmdata+simplejpeg", "webdataset", "litdata", "mosaic", "ray", "transport")
PEER_SYSTEMS = ("webdataset", "litdata", "mosaic", "ray")
NEEDS = {"mmdata+simplejpeg": "simplejpeg", "webdataset": "webdataset", "litdata": "litdata", "mosaic": "streaming",
         "ray": "ray.data"}
BATCH = 64
VIEW_FRACTION = 0.3


# -- the dataset ----------------------------------------------------------------------------------


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


def stored_keys(root: Path) -> list[str]:
    return [k for s in layout.complete_shards(root) for k in pq.read_table(layout.parquet_path(root, s)).column("key")
            .to_pylist()]


def write_view(root: Path, keys: list[str], fraction: float, seed: int = 0) -> list[str]:
    chosen = sorted(random.Random(seed).sample(keys, round(len(keys) * fraction)))
    table = pa.concat_tables([pq.read_table(layout.parquet_path(root, s)) for s in layout.complete_shards(root)])
    rows = table.filter(pc.is_in(table.column("key"), pa.array(chosen)))
    rows = rows.append_column("shard", pa.array([k[: layout.SHARD_DIGITS] for k in rows.column("key").to_pylist()]))
    write_parquet(rows, layout.views_dir(root) / "sample30.parquet", VIEW_SCHEMA)
    return chosen


def tar_samples(tar_path: str):
    """``{"key", "jpg", "txt"}`` per sample of one of our tars, for the conversions."""
    with tarfile.open(tar_path) as tar:
        current, members = None, {}
        for info in tar:
            key, extension = info.name.split(".", 1)
            if key != current and current is not None:
                yield {"key": current, "jpg": members["jpg"], "txt": members["txt"].decode()}
                members = {}
            current = key
            members[extension] = tar.extractfile(info).read()
        if current is not None:
            yield {"key": current, "jpg": members["jpg"], "txt": members["txt"].decode()}


def tars_of(root: Path) -> list[str]:
    return [str(layout.tar_path(root, s)) for s in layout.complete_shards(root)]


# -- one pass, in a fresh process -----------------------------------------------------------------


def decode_pil(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_tensor(data: bytes):
    import torch
    import torchvision.io

    return torchvision.io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                      mode=torchvision.io.ImageReadMode.RGB)


def collate(items: list[dict]):
    """Tensors stacked (one shared-memory block per batch), PIL images as a list."""
    import torch

    images = [item["image"] for item in items]
    return torch.stack(images) if isinstance(images[0], torch.Tensor) else images


def peer_item(key: str, jpg: bytes, caption: str, output: str) -> dict:
    return {"key": key, "image": decode_pil(jpg) if output == "pil" else decode_tensor(jpg), "caption": caption}


class Indexed:
    """A map-style view of a random-access dataset: the chosen indices only (litdata/mosaic views)."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        return self.dataset[self.indices[position]]

    def __iter__(self):
        return (self.dataset[index] for index in self.indices)


class Transport:
    """``samples`` copies of the first stored sample's image, decoded once per worker process (tensors are
    copied by the batch's stack, PIL images here)."""

    def __init__(self, root: Path, samples: int, output: str):
        self.root, self.samples, self.output, self.image = root, samples, output, None

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict:
        if self.image is None:
            jpg = next(tar_samples(tars_of(self.root)[0]))["jpg"]
            self.image = decode_pil(jpg) if self.output == "pil" else decode_tensor(jpg)
        # a copy per sample: a batch of one object would be pickled once (pickle's memo), not 64 times
        return {"key": str(index), "image": self.image.copy() if self.output == "pil" else self.image, "caption": ""}


def torch_iterable(cell: dict, plan: dict):
    """The system's dataset for ``cell`` (built inside the clock), iterated by a DataLoader in "dl2"."""
    system, output, root = cell["system"], cell["output"], Path(cell["root"])
    view = cell["set"] == "view30"
    if system.startswith("mmdata"):
        import mmdata

        dataset = mmdata.stream(root, view="sample30" if view else None, shuffle=False, decode=output,
                                jpeg_decoder="simplejpeg" if system == "mmdata+simplejpeg" else "auto")
        return dataset.loader(batch_size=BATCH, num_workers=2, collate_fn=collate) if cell["mode"] == "dl2" else dataset
    if system == "webdataset":
        import webdataset as wds

        pipeline = wds.WebDataset(tars_of(root), shardshuffle=False, empty_check=False)
        if view:
            chosen = set(plan["chosen"])
            pipeline = pipeline.select(lambda sample: sample["__key__"] in chosen)
        pipeline = pipeline.decode("pil" if output == "pil" else "torchrgb8").map(
            lambda sample: {"key": sample["__key__"], "image": sample["jpg"], "caption": sample["txt"]}
        )
        dataset = pipeline
    elif system == "litdata":
        import litdata

        class Images(litdata.StreamingDataset):
            def __getitem__(self, index):
                sample = super().__getitem__(index)
                return peer_item(sample["key"], sample["jpg"], sample["txt"], output)

        dataset = Images(str(root / "_litdata"), shuffle=False)
    elif system == "mosaic":
        import streaming

        class Images(streaming.StreamingDataset):
            def get_item(self, index):
                sample = super().get_item(index)
                return peer_item(sample["key"], sample["jpg"], sample["txt"], output)

        dataset = Images(local=str(root / "_mds"), shuffle=False, batch_size=BATCH)
    elif system == "transport":
        dataset = Transport(root, len(plan["chosen"]) if view else plan["samples"], output)
    if view and system in ("litdata", "mosaic"):
        dataset = Indexed(dataset, plan["chosen_indices"])
    if cell["mode"] == "dl2":
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size=BATCH, num_workers=2, collate_fn=collate)
    return dataset


def count(iterable, batched: bool) -> int:
    return sum(len(batch) for batch in iterable) if batched else sum(1 for _ in iterable)


def ray_pass(cell: dict, plan: dict) -> dict:
    import ray
    import ray.data

    start = time.perf_counter()
    ray.init(address="local", num_cpus=1 if cell["mode"] == "1p" else 2, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")  # "local": never join a cluster someone else started
    ray.data.DataContext.get_current().enable_progress_bars = False
    setup = time.perf_counter() - start
    chosen = set(plan["chosen"])

    def decoded(row: dict) -> dict:
        return {"key": row["__key__"], "image": np.asarray(decode_pil(row["jpg"])), "caption": row["txt"].decode()}

    start = time.perf_counter()
    dataset = ray.data.read_webdataset(tars_of(Path(cell["root"])), decoder=None)
    if cell["set"] == "view30":
        dataset = dataset.filter(lambda row: row["__key__"] in chosen)
    dataset = dataset.map(decoded)
    if cell["output"] == "pil":
        samples = sum(1 for row in dataset.iter_rows() if Image.fromarray(row["image"]))
    else:
        samples = sum(len(batch["image"]) for batch in dataset.select_columns(["image"]).iter_torch_batches(
            batch_size=BATCH))
    return {"samples": samples, "seconds": time.perf_counter() - start, "setup_seconds": setup}


def one_pass(cell: dict) -> dict:
    """Imports, then the timed first pass and, in one process, a later pass of the same dataset."""
    import warnings

    import pandas  # noqa: F401 - pyarrow imports it on its first Python-to-Arrow conversion
    import pyarrow.pandas_compat  # noqa: F401
    import torch  # noqa: F401
    import torchvision.io  # noqa: F401

    Image.preinit()  # Pillow imports its common plugins on the first open: an import like the others
    warnings.filterwarnings("ignore")  # torchvision.io's deprecation notice, LitData/MDS chatter
    system = cell["system"]
    __import__(NEEDS.get(system, "mmdata.stream.dataset"))
    if system.startswith("mmdata"):
        import mmdata.stream.dataset  # noqa: F401
    plan = json.loads((Path(cell["root"]) / "_bench" / "plan.json").read_text())
    if system == "ray":
        return ray_pass(cell, plan)
    batched = cell["mode"] == "dl2"
    start = time.perf_counter()
    iterable = torch_iterable(cell, plan)
    samples = count(iterable, batched)
    result = {"samples": samples, "seconds": time.perf_counter() - start}
    if not batched:
        start = time.perf_counter()
        if count(iterable, batched) != samples:
            raise RuntimeError(f"{system}: the later pass yielded another number of samples")
        result["later_seconds"] = time.perf_counter() - start
    return result


def convert(kind: str, root: Path) -> dict:
    """LitData's optimize or MosaicML's MDSWriter over our tars, timed after the imports."""
    tars = tars_of(root)
    if kind == "litdata":
        import litdata

        output = root / "_litdata"
        shutil.rmtree(output, ignore_errors=True)
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            litdata.optimize(fn=tar_samples, inputs=tars, output_dir=str(output), chunk_bytes="16MB", num_workers=1,
                             mode="overwrite")
    else:
        from streaming import MDSWriter

        output = root / "_mds"
        shutil.rmtree(output, ignore_errors=True)
        start = time.perf_counter()
        with MDSWriter(out=str(output), columns={"key": "str", "jpg": "bytes", "txt": "str"}, size_limit="16mb") as out:
            for tar in tars:
                for sample in tar_samples(tar):
                    out.write(sample)
    return {"seconds": time.perf_counter() - start}


# -- the harness ----------------------------------------------------------------------------------


def available(system: str) -> bool:
    probe = f"import {NEEDS[system]}" if system in NEEDS else "import mmdata"
    return subprocess.run([sys.executable, "-c", probe], env=child_env(system), capture_output=True).returncode == 0


def child_env(system: str) -> dict:
    """The peers' folder goes first on the path of the processes that need a package only it holds."""
    environment = dict(os.environ)
    if system in ("litdata", "mosaic", "mmdata+simplejpeg") and PEERS.is_dir():
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PEERS), environment.get("PYTHONPATH")]))
    return environment


def tree_pss(pid: int) -> int:
    """PSS bytes of a process and its descendants (those that vanish meanwhile count 0)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
            for thread in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{thread}/children").read_text().split()
                pending.extend(int(child) for child in children)
    return total


def run_child(arguments: list[str], system: str, *, sample_memory: bool = False, timeout: float = 900) -> dict:
    """Run this script with ``arguments`` in a fresh process; its last stdout line is JSON. With
    ``sample_memory``, adds ``peak_pss`` (sampled every 0.1 s; the sampling slows the pass, so such
    passes are not timed)."""
    process = subprocess.Popen([sys.executable, __file__, *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=child_env(system), text=True)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.1):
            peak = max(peak, tree_pss(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        sampler.start()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        done.set()
        if sample_memory:
            sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments[:2])} failed ({process.returncode}):\n{stderr[-3000:]}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_pss": peak}


def cells_for(systems: list[str], modes: list[str]) -> list[dict]:
    cells = []
    for data_set, outputs in (("full", ("pil", "tensor")), ("view30", ("pil",))):
        for output in outputs:
            for mode in modes:
                cells.extend({"set": data_set, "output": output, "mode": mode, "system": s} for s in systems
                             if s != "transport" or mode == "dl2")
    return cells


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def cell_name(cell: dict) -> str:
    return f"{cell['set']}/{cell['output']}/{cell['mode']}"


def summarise(results: list[dict], systems: list[str], memory: dict[tuple, int]) -> tuple[str, dict]:
    """A Markdown table (medians over rounds) and the same figures as a dict."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for result in results:
        groups.setdefault(cell_name(result), {}).setdefault(result["system"], []).append(result)
    lines = ["| set/output/mode | " + " | ".join(systems) + " | mmdata / best peer | +simplejpeg / best peer | "
             "mmdata PSS / leanest peer | mmdata / transport |", "|---" * (len(systems) + 5) + "|"]
    figures = {}
    for name, by_system in groups.items():
        row = {}
        for system, runs in by_system.items():
            pss = memory.get((name, system))
            row[system] = {
                "first": median([r["samples"] / r["seconds"] for r in runs]),
                "later": median([r["samples"] / r["later_seconds"] for r in runs if "later_seconds" in r]),
                "peak_pss_mib": pss / 2**20 if pss else None,
                "setup_s": median([r["setup_seconds"] for r in runs if "setup_seconds" in r]),
            }
        peers = {s: row[s]["first"] for s in PEER_SYSTEMS if s in row}
        best = max(peers, key=peers.get) if peers else None
        ratios = [f"{row[s]['first'] / peers[best]:.2f}× {best}" if best and s in row else "—"
                  for s in ("mmdata", "mmdata+simplejpeg")]
        peer_memory = {s: row[s]["peak_pss_mib"] for s in PEER_SYSTEMS if s in row and row[s]["peak_pss_mib"]}
        leanest = min(peer_memory, key=peer_memory.get) if peer_memory else None
        mmdata_memory = row.get("mmdata", {}).get("peak_pss_mib")
        ratios.append(f"{mmdata_memory / peer_memory[leanest]:.2f}× {leanest}" if leanest and mmdata_memory else "—")
        ceiling = row.get("transport", {}).get("first")
        ratios.append(f"{row['mmdata']['first'] / ceiling:.0%}" if ceiling and "mmdata" in row else "—")
        cells = []
        for system in systems:
            figure = row.get(system)
            if figure is None:
                cells.append("—")
                continue
            later = f" / {figure['later']:,.0f}" if figure["later"] else ""
            pss = f" ({figure['peak_pss_mib']:,.0f} MiB)" if figure["peak_pss_mib"] else ""
            cells.append(f"{figure['first']:,.0f}{later}{pss}")
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        figures[name] = row
    return "\n".join(lines), figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="600 samples, one round, one-process cells")
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ", ".join(SYSTEMS))
    parser.add_argument("--modes", default="1p,dl2", help="1p (one process), dl2 (DataLoader, 2 workers)")
    parser.add_argument("--root", default=None, help="dataset folder to build (or reuse) the shards in")
    parser.add_argument("--pass", dest="one_pass", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--convert", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_pass:
        print(json.dumps(one_pass(json.loads(args.one_pass))))
        return
    if args.convert:
        print(json.dumps(convert(args.convert, Path(args.root))))
        return
    if args.quick:
        args.samples, args.shard_size, args.rounds, args.modes = 600, 100, 1, "1p"

    root = Path(args.root or tempfile.mkdtemp(prefix="mmdata-bench-stream-"))
    if not layout.complete_shards(root):
        build(root, args.samples, args.shard_size, args.image_size)
    keys = stored_keys(root)
    chosen = write_view(root, keys, VIEW_FRACTION)
    positions = {key: index for index, key in enumerate(keys)}
    (root / "_bench").mkdir(exist_ok=True)
    (root / "_bench" / "plan.json").write_text(
        json.dumps({"samples": len(keys), "chosen": chosen, "chosen_indices": [positions[key] for key in chosen]})
    )
    systems = []
    for system in args.systems.split(","):
        if available(system):
            systems.append(system)
        else:
            print(f"skipping {system}: {NEEDS[system]} is not importable; install the peers with\n  {PEERS_INSTALL}",
                  file=sys.stderr)
    conversions = {}
    for kind in ("litdata", "mosaic"):
        if kind in systems:
            conversions[kind] = run_child(["--convert", kind, "--root", str(root)], kind)["seconds"]
    for tar in tars_of(root):  # the page cache holds every shard before the first timed pass
        Path(tar).read_bytes()

    cells = cells_for(systems, args.modes.split(","))
    memory = {}
    if not args.quick:  # an untimed round for memory: sampling the tree slows a pass by 20-35 %
        for cell in cells:
            outcome = run_child(["--pass", json.dumps({**cell, "root": str(root)})], cell["system"], sample_memory=True)
            memory[cell_name(cell), cell["system"]] = outcome["peak_pss"]
    results, loads = [], []
    for round_number in range(args.rounds):
        loads.append(os.getloadavg()[0])
        shift = round_number % len(systems)
        order = systems[shift:] + systems[:shift]
        for cell in sorted(cells, key=lambda c: (c["set"], c["output"], c["mode"], order.index(c["system"]))):
            full_cell = {**cell, "root": str(root)}
            outcome = run_child(["--pass", json.dumps(full_cell)], cell["system"])
            expected = len(chosen) if cell["set"] == "view30" else len(keys)
            if outcome["samples"] != expected:
                raise RuntimeError(f"{cell} yielded {outcome['samples']} samples, expected {expected}")
            results.append({**cell, **outcome})
            print(f"round {round_number + 1} {cell['set']} {cell['output']} {cell['mode']} {cell['system']}: "
                  f"{outcome['samples'] / outcome['seconds']:,.0f} samples/s", file=sys.stderr)
    loads.append(os.getloadavg()[0])
    table, figures = summarise(results, systems, memory)
    print(f"{len(keys)} samples ({len(chosen)} in the view) of {args.image_size} px in {len(tars_of(root))} shards, "
          f"{args.rounds} rounds; 1-minute load average at each round's start and at the end: {loads}")
    print("samples/s, median of rounds: first pass in a fresh process / later pass in it (peak PSS of the process "
          "tree, from an untimed round)\n")
    print(table)
    print("\nconversion (s): " + ", ".join(f"{k} {v:.1f}" for k, v in conversions.items()))
    ray_setup = [r["setup_seconds"] for r in results if r["system"] == "ray"]
    if ray_setup:
        print(f"ray.init (s, outside the clock): median {median(ray_setup):.1f}")
    report = {"samples": len(keys), "view_samples": len(chosen), "rounds": args.rounds, "load_average": loads,
              "conversion_s": conversions, "cells": figures}
    (Path(__file__).resolve().parent / "_work").mkdir(exist_ok=True)
    (Path(__file__).resolve().parent / "_work" / "stream.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
