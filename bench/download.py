"""Benchmark: ``mmdata download`` against img2dataset 1.47.0 on the same machine, same settings.

10,000 web-sized images (320-2048 px, mostly JPEG; generated once into ``.cache/``, the set for N a
prefix of the set for N+1) are served by nginx on 127.0.0.1. Both tools run as whole commands
(start-up included) with 256 px, border, jpg q95, 2 processes and the same thread count, alternating;
mmdata once on its default executor (a local Ray) and once with ``--executor processes``. The
ceiling, measured in the same round, is the same decode+resize+encode code (``process_image``) on
2 processes with the bodies already in memory.
Targets (issue 17), on the default executor: whole command >= 2.0x img2dataset, and time from the
first shard's start to the last shard's end >= 70% of the ceiling; both printed as met or missed.

    python bench/download.py --quick      # 300 images, one round (minutes, most of it set-up)
    python bench/download.py              # 10,000 images, three alternating rounds
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, WORK, nginx_serving, side_venv, timed_run  # noqa: E402

from mmdata.download.image import ImageOptions, process_image  # noqa: E402
from mmdata.stats import load_shard_stats, total_stats  # noqa: E402

IMAGES = CACHE / "bench-download" / "images-v2"
IMG2DATASET = ["img2dataset==1.47.0"]
# img2dataset checks albumentations for updates over the network unless told not to.
IMG2DATASET_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1"}
PROCESSES = 2
# mmdata's runs: the default executor (a local Ray started for the job) and a local process pool.
MMDATA_EXECUTORS = {"mmdata": "ray", "mmdata-processes": "processes"}
DEFAULT_TOOL = "mmdata"  # the row the targets are checked on: the default executor
TARGET_RATIO = 2.0  # whole command vs img2dataset
TARGET_OF_CEILING = 0.70  # first shard start to last shard end vs the ceiling
ASPECTS = (4 / 3, 3 / 2, 1.0, 16 / 9, 3 / 4, 2 / 3, 9 / 16)


def image_name(index: int) -> str:
    """Mostly JPEG, as on the web: 85% jpg, 10% png, 5% webp; the set for N is a prefix of the set for N+1."""
    bucket = index % 20
    extension = "png" if bucket in (3, 13) else "webp" if bucket == 7 else "jpg"
    return f"{index:06d}.{extension}"


def make_image(index: int, *, grain: int) -> Image.Image:
    """A photo-like image: smooth colour fields plus fine grain, so it compresses like a photo
    (web JPEGs of these sizes weigh ~50-400 kB); ``grain=0`` gives a flat graphic, as web PNGs are."""
    rng = np.random.default_rng(index)
    long_side = int(rng.integers(320, 2049))
    aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
    width, height = (
        (long_side, max(1, round(long_side / aspect))) if aspect >= 1
        else (max(1, round(long_side * aspect)), long_side)
    )
    coarse = rng.integers(0, 256, size=(max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    if not grain:
        return ImageOps.posterize(image, 3)  # few colours, flat areas
    noise = rng.integers(-grain, grain + 1, size=(height, width, 1), dtype=np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def ensure_images(count: int) -> list[str]:
    """Generate the first ``count`` images into the cache (once); returns their file names."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    names = [image_name(index) for index in range(count)]
    missing = [index for index, name in enumerate(names) if not (IMAGES / name).exists()]
    if missing:
        print(f"generating {len(missing)} images into {IMAGES} (once) ...", file=sys.stderr)
        with ProcessPoolExecutor() as pool:
            list(pool.map(_generate, missing, chunksize=16))
    return names


def _generate(index: int) -> None:
    name = image_name(index)
    image = make_image(index, grain=0 if name.endswith(".png") else 8)
    partial = IMAGES / f".{name}.partial"
    options = {
        "jpg": {"format": "JPEG", "quality": 85},
        "png": {"format": "PNG"},
        "webp": {"format": "WEBP", "quality": 80},
    }
    image.save(partial, **options[name.rsplit(".", 1)[1]])
    partial.rename(IMAGES / name)


def write_url_list(names: list[str], base_url: str, path: Path) -> None:
    table = pa.table(
        {"url": [f"{base_url}/{name}" for name in names], "caption": [f"picture {name}" for name in names]}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def run_mmdata(urls: Path, output: Path, *, threads: int, shard_size: int, executor: str) -> float:
    shutil.rmtree(output, ignore_errors=True)
    command = [
        sys.executable, "-m", "mmdata", "download", str(urls), "--output", str(output),
        "--image-size", "256", "--resize-mode", "border", "--encode-format", "jpg", "--encode-quality", "95",
        "--workers", str(PROCESSES), "--threads", str(threads), "--shard-size", str(shard_size),
        "--timeout", "10", "--retries", "0", "--allow-network", "127.0.0.1/32", "--executor", executor,
    ]
    return timed_run(command, environment={"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}, log=output.with_suffix(".log"))


def run_img2dataset(binary: Path, urls: Path, output: Path, *, threads: int, shard_size: int) -> float:
    shutil.rmtree(output, ignore_errors=True)
    command = [
        str(binary / "img2dataset"), "--url_list", str(urls), "--input_format", "parquet",
        "--url_col", "url", "--caption_col", "caption", "--output_format", "webdataset",
        "--output_folder", str(output), "--image_size", "256", "--resize_mode", "border",
        "--encode_format", "jpg", "--encode_quality", "95", "--processes_count", str(PROCESSES),
        "--thread_count", str(threads), "--number_sample_per_shard", str(shard_size),
        "--timeout", "10", "--retries", "0", "--distributor", "multiprocessing", "--enable_wandb", "False",
    ]
    return timed_run(command, environment=IMG2DATASET_ENV, log=output.with_suffix(".log"))


_start_together = None


def _set_barrier(barrier) -> None:
    global _start_together
    _start_together = barrier


def _process_share(paths: list[str]) -> tuple[int, float, float]:
    """Decode+resize+encode one worker's share of the bodies, read into memory first; returns the
    successes and when processing started and ended (after every worker has read its share)."""
    options = ImageOptions(image_size=256, resize_mode="border", encode_format="jpg", encode_quality=95)
    bodies = [Path(path).read_bytes() for path in paths]
    process_image(bodies[0], options)  # warm: imports, codec tables
    _start_together.wait(timeout=600)  # a worker that never starts fails the bench instead of hanging it
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across the processes
    successes = sum(process_image(body, options).status == "success" for body in bodies)
    return successes, start, time.perf_counter()


def measure_ceiling(names: list[str]) -> tuple[float, int]:
    """Images/s of bare decode+resize+encode on 2 processes that hold their share of the bodies in
    memory before the clock starts (reading and handing out bodies are not counted)."""
    paths = [str(IMAGES / name) for name in names]
    shares = [paths[worker::PROCESSES] for worker in range(PROCESSES)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    with ProcessPoolExecutor(PROCESSES, mp_context=context, initializer=_set_barrier, initargs=(barrier,)) as pool:
        results = list(pool.map(_process_share, shares))
    seconds = max(end for _, _, end in results) - min(start for _, start, _ in results)
    return len(paths) / seconds, sum(successes for successes, _, _ in results)


def target_lines(figures: dict, tools: list[str], ceiling: float) -> str:
    """The issue's two targets on the default executor, each as met or missed with its figures."""
    key = DEFAULT_TOOL.replace("-", "_")
    processing = figures[f"{key}_processing_images_per_s"]
    of_ceiling = processing / ceiling
    lines = [f"target: {DEFAULT_TOOL} (default executor) first shard start to last shard end >= "
             f"{TARGET_OF_CEILING:.0%} of the ceiling: {'met' if of_ceiling >= TARGET_OF_CEILING else 'missed'} "
             f"({processing:.0f} of {ceiling:.0f} images/s, {of_ceiling:.0%})"]
    if "img2dataset" in tools:
        whole, peer = figures[f"{key}_images_per_s"], figures["img2dataset_images_per_s"]
        ratio = whole / peer
        lines.insert(0, f"target: {DEFAULT_TOOL} (default executor) whole command >= {TARGET_RATIO:.1f}x img2dataset: "
                        f"{'met' if ratio >= TARGET_RATIO else 'missed'} ({whole:.0f} vs {peer:.0f} images/s, "
                        f"{ratio:.2f}x)")
    else:
        lines.insert(0, f"target: whole command >= {TARGET_RATIO:.1f}x img2dataset: not measured (--skip-img2dataset)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 images, one round")
    parser.add_argument("--images", type=int, help="number of images (default 10000, quick 300)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=32, help="threads per process, both tools (default 32)")
    parser.add_argument("--skip-img2dataset", action="store_true", help="measure mmdata and the ceiling only")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    count = args.images or (300 if args.quick else 10_000)
    rounds = args.rounds or (1 if args.quick else 3)
    shard_size = max(25, math.ceil(count / 8))  # several shards per process, for both tools

    names = ensure_images(count)
    img2dataset_bin = (
        None if args.skip_img2dataset
        else side_venv("bench-img2dataset-venv", IMG2DATASET, environment=IMG2DATASET_ENV)
    )
    work = WORK / "download"
    urls = work / "urls.parquet"

    # Whole command (start-up included) and processing only (shards' own start/end times: both tools
    # write them to their stats files), so fixed start-up costs do not hide per-image speed. mmdata runs
    # twice: on its default executor (a local Ray started for the job) and on a local process pool.
    tools = [*MMDATA_EXECUTORS, *([] if img2dataset_bin is None else ["img2dataset"])]
    rates: dict[str, list[float]] = {tool: [] for tool in tools}
    processing_rates: dict[str, list[float]] = {tool: [] for tool in tools}
    startups: dict[str, list[float]] = {tool: [] for tool in tools}
    wind_downs: dict[str, list[float]] = {tool: [] for tool in tools}
    successes: dict[str, int] = {}
    ceilings: list[float] = []
    with nginx_serving(IMAGES, probe=names[0]) as base_url:
        write_url_list(names, base_url, urls)
        for round_index in range(rounds):
            ceiling, decodable = measure_ceiling(names)
            ceilings.append(ceiling)
            print(f"round {round_index + 1} ceiling      {ceiling:6.0f} images/s "
                  f"(process_image, {PROCESSES} processes, {decodable} decodable)", flush=True)
            for tool in tools if round_index % 2 == 0 else tools[::-1]:
                output = work / tool
                launched = time.time()
                if tool in MMDATA_EXECUTORS:
                    seconds = run_mmdata(urls, output, threads=args.threads, shard_size=shard_size,
                                         executor=MMDATA_EXECUTORS[tool])
                else:
                    seconds = run_img2dataset(img2dataset_bin, urls, output, threads=args.threads,
                                              shard_size=shard_size)
                shard_stats = load_shard_stats(output)
                totals = total_stats(shard_stats)
                first_start = min(s["start_time"] for s in shard_stats)
                last_end = max(s["end_time"] for s in shard_stats)
                window = last_end - first_start
                successes[tool] = totals["successes"]
                rates[tool].append(count / seconds)
                processing_rates[tool].append(count / window)
                # Fixed costs: launch to the first shard's start (imports, cluster or pool start-up, first
                # task), and the last shard's end to the command's exit (manifest, shutting down).
                startups[tool].append(first_start - launched)
                wind_downs[tool].append(launched + seconds - last_end)
                print(f"round {round_index + 1} {tool:<17} {seconds:6.1f} s  "
                      f"{count / seconds:6.0f} images/s whole command, "
                      f"{count / window:6.0f} images/s from first shard start to last shard end  "
                      f"(start-up {startups[tool][-1]:.1f} s, wind-down {wind_downs[tool][-1]:.1f} s)  "
                      f"{totals['successes']}/{totals['count']} stored", flush=True)

    ceiling = statistics.median(ceilings)
    figures = {"images": count, "rounds": rounds, "threads": args.threads, "processes": PROCESSES,
               "ceiling_images_per_s": round(ceiling, 1), "successes": successes, "quick": args.quick}
    for tool in tools:
        key = tool.replace("-", "_")
        figures[f"{key}_images_per_s"] = round(statistics.median(rates[tool]), 1)
        figures[f"{key}_processing_images_per_s"] = round(statistics.median(processing_rates[tool]), 1)
        figures[f"{key}_startup_s"] = round(statistics.median(startups[tool]), 2)
        figures[f"{key}_wind_down_s"] = round(statistics.median(wind_downs[tool]), 2)
    print(f"\nceiling: {ceiling:.0f} images/s (decode+resize+encode of bodies in memory, {PROCESSES} processes)")
    for tool in tools:
        key = tool.replace("-", "_")
        whole, processing = figures[f"{key}_images_per_s"], figures[f"{key}_processing_images_per_s"]
        line = (f"{tool:<17} {whole:4.0f} images/s whole command ({100 * whole / ceiling:3.0f}% of the ceiling), "
                f"{processing:4.0f} processing ({100 * processing / ceiling:3.0f}%); fixed costs "
                f"{figures[f'{key}_startup_s']:.1f} s start-up + {figures[f'{key}_wind_down_s']:.1f} s wind-down")
        if tool != "img2dataset" and "img2dataset" in tools:
            figures[f"{key}_ratio"] = round(whole / figures["img2dataset_images_per_s"], 2)
            figures[f"{key}_processing_ratio"] = round(processing / figures["img2dataset_processing_images_per_s"], 2)
            line += f"; {figures[f'{key}_ratio']:.2f}x / {figures[f'{key}_processing_ratio']:.2f}x img2dataset"
        figures[f"{key}_of_ceiling"] = round(whole / ceiling, 3)
        figures[f"{key}_processing_of_ceiling"] = round(processing / ceiling, 3)
        print(line)
    print("stored: " + ", ".join(f"{tool} {successes[tool]}" for tool in tools) + f" of {count}")
    print(target_lines(figures, tools, ceiling))
    key = DEFAULT_TOOL.replace("-", "_")
    figures["target_ratio_met"] = figures[f"{key}_ratio"] >= TARGET_RATIO if "img2dataset" in tools else None
    figures["target_of_ceiling_met"] = figures[f"{key}_processing_of_ceiling"] >= TARGET_OF_CEILING
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
