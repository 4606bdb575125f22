"""Benchmark: mmdata on an S3 server (moto on loopback) against a local folder, same corpus, same run.

Download: the web-sized corpus of ``bench/download.py`` (same cache, served by nginx), same options
(256 px, border, jpg q95, 2 processes x 32 threads, executor "processes"), into a local folder and
into ``s3://bench/run-N``, alternating over the rounds; each run is a fresh process whose imports
(mmdata, s3fs) come before the clock, which times the ``mmdata.download`` call.
Stream: ``mmdata.stream`` over the local dataset and over its S3 copy (the last round's), one fresh
process per pass (imports before the clock): raw bytes and PIL-decoded over the whole dataset in
shard order (coalesced ranged reads of up to 4 MiB), and raw bytes of a random 30% view (short runs).

moto is a Python server sharing the 2 cores with mmdata: each S3 row shows the CPU seconds moto
used and the requests it logged, so a reader can tell how much of a gap is the fake server. (moto
answers a ranged GET by reading the whole object and slicing it; real S3 does not.)
Goals: download on S3 within 1.3x of local wall time; the loader on S3 at >= 0.8x of its local throughput.

    python bench/storage.py --quick      # 300 images, one round (a smoke check)
    python bench/storage.py              # 3000 images, three rounds (about 5 minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK  # noqa: E402
from _moto import free_port, s3_environment  # noqa: E402

BUCKET = "bench"
PROCESSES = 2
DOWNLOAD_GOAL = 1.3  # S3 wall / local wall, at most
STREAM_GOAL = 0.8  # S3 samples/s / local samples/s, at least
# name -> (decode, view fraction); a pass reads whole epochs until it has read for MIN_READ_SECONDS
STREAM_MODES = {"raw bytes": (None, None), "decoded (PIL)": ("pil", None), "raw bytes, 30% view": (None, 0.3)}
MIN_READ_SECONDS = 3.0
QUICK_MIN_READ_SECONDS = 0.5


# --- the measured processes (fresh interpreters, run by the main process) -------------------------


def child_download(spec: dict) -> dict:
    import fsspec  # noqa: F401 - heavy imports before the clock
    import s3fs  # noqa: F401

    import mmdata
    import mmdata.download.job  # noqa: F401

    start = time.perf_counter()
    manifest = mmdata.download(
        input=spec["urls"], output_dir=spec["output"], allow_network=["127.0.0.1/32"], executor="processes",
        workers=PROCESSES, threads=spec["threads"], shard_size=spec["shard_size"], image_size=256,
        resize_mode="border", encode_format="jpg", encode_quality=95, timeout=10, retries=0,
    )
    return {"seconds": time.perf_counter() - start, "totals": manifest["totals"], "shards": manifest["shards"]}


def child_stream(spec: dict) -> dict:
    import fsspec  # noqa: F401 - heavy imports before the clock
    import PIL.Image  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import s3fs  # noqa: F401
    import torch  # noqa: F401

    import mmdata.stream.dataset as stream_dataset

    view = json.loads(Path(spec["view"]).read_text()) if spec.get("view") else None
    start = time.perf_counter()
    dataset = stream_dataset.stream(spec["root"], view=view, shuffle=False, decode=spec["decode"])
    opened = time.perf_counter()
    cpu_before = _own_cpu_seconds()
    count = size = epochs = 0
    while epochs == 0 or time.perf_counter() - opened < spec["min_seconds"]:
        for item in dataset:
            count += 1
            image = item["image"]
            size += len(image) if isinstance(image, bytes) else image.width * image.height * 3
        epochs += 1
    end = time.perf_counter()
    return {"open_seconds": opened - start, "read_seconds": end - opened, "samples": count, "bytes": size,
            "epochs": epochs, "read_cpu_seconds": _own_cpu_seconds() - cpu_before}


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process (the prefetch thread too)
    return usage.ru_utime + usage.ru_stime


def run_child(spec: dict, log: Path) -> dict:
    """Run one measured step in a fresh interpreter; its figures, plus the whole command's wall and
    the busy CPU seconds of the whole machine meanwhile (all cores, every process: mmdata, its pool
    workers, nginx, moto, and anything else running)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    result_file = log.with_suffix(".json")
    result_file.unlink(missing_ok=True)
    spec = {**spec, "result": str(result_file)}
    before = _busy_cpu_seconds()
    with open(log, "w") as handle:
        start = time.perf_counter()
        completed = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                   stdout=handle, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
    busy = _busy_cpu_seconds() - before
    if completed.returncode != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise ChildFailed(lines[-1] if lines else f"exit code {completed.returncode}", log)
    result = json.loads(result_file.read_text())
    result["command_seconds"] = wall
    result["machine_cpu_seconds"] = busy
    return result


def _busy_cpu_seconds() -> float:
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class ChildFailed(RuntimeError):
    def __init__(self, last_line: str, log: Path):
        super().__init__(f"{last_line} (see {log})")
        self.last_line, self.log = last_line, log


# --- the main process -----------------------------------------------------------------------------


def s3_names(filesystem, prefix: str) -> list[str]:
    filesystem.invalidate_cache()
    return sorted(path[len(prefix) + 1:] for path in filesystem.find(prefix))


def local_names(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 images, one round")
    parser.add_argument("--images", type=int, help="number of images (default 3000, quick 300)")
    parser.add_argument("--rounds", type=int, help="alternating rounds, download and stream (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=32, help="threads per download process (default 32)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = (child_download if spec["mode"] == "download" else child_stream)(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return 0

    count = args.images or (300 if args.quick else 3000)
    rounds = args.rounds or (1 if args.quick else 3)
    shard_size = max(25, math.ceil(count / 8))  # as bench/download.py: several shards per process
    min_seconds = QUICK_MIN_READ_SECONDS if args.quick else MIN_READ_SECONDS

    # The endpoint goes into os.environ before anything imports s3fs: every child and pool worker inherits it.
    port = free_port()
    os.environ.update(s3_environment(port))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import pyarrow.parquet as pq
    import s3fs
    from _common import nginx_serving
    from _moto import moto_serving
    from download import IMAGES, ensure_images, write_url_list

    names = ensure_images(count)
    work = WORK / "storage"
    shutil.rmtree(work, ignore_errors=True)
    urls = work / "urls.parquet"
    local_root = work / "local"

    downloads: dict[str, list[float]] = {"local": [], "s3": []}
    commands: dict[str, list[float]] = {"local": [], "s3": []}
    machine_cpu: dict[str, list[float]] = {"local": [], "s3": []}
    moto_cpu: list[float] = []
    download_requests = None
    successes: dict[str, list[int]] = {"local": [], "s3": []}
    checks: list[str] = []
    s3_root = None
    with moto_serving(port) as moto, nginx_serving(IMAGES, probe=names[0]) as base_url:
        filesystem = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        filesystem.mkdir(BUCKET)
        write_url_list(names, base_url, urls)
        import psutil

        idle_load = psutil.cpu_percent(interval=1.0)  # other work on the machine skews every figure
        print(f"{count} images, {rounds} round(s), {PROCESSES} processes x {args.threads} threads, "
              f"shards of {shard_size}; moto on {moto.endpoint}; machine {idle_load:.0f}% busy before the run"
              + (" (other processes are running: figures will be noisy)" if idle_load > 10 else ""), flush=True)

        # --- download: local and S3 alternating ----------------------------------------------
        for round_index in range(rounds):
            for where in ("local", "s3") if round_index % 2 == 0 else ("s3", "local"):
                if where == "local":
                    shutil.rmtree(local_root, ignore_errors=True)
                    output = str(local_root)
                else:
                    if s3_root is not None:
                        filesystem.rm(s3_root.removeprefix("s3://"), recursive=True)  # keep moto lean
                    s3_root = output = f"s3://{BUCKET}/run-{round_index + 1}"
                mark = moto.mark()
                result = run_child({"mode": "download", "urls": str(urls), "output": output, "threads": args.threads,
                                    "shard_size": shard_size}, work / f"download-{where}-{round_index + 1}.log")
                cost = moto.since(mark)
                downloads[where].append(result["seconds"])
                commands[where].append(result["command_seconds"])
                machine_cpu[where].append(result["machine_cpu_seconds"])
                successes[where].append(result["totals"]["successes"])
                line = (f"round {round_index + 1} download {where:<5} {result['seconds']:6.1f} s in mmdata.download "
                        f"({result['command_seconds']:.1f} s whole command), "
                        f"{count / result['seconds']:5.0f} images/s, "
                        f"{result['totals']['successes']}/{result['totals']['count']} stored, "
                        f"machine CPU {result['machine_cpu_seconds']:.1f} s")
                if where == "s3":
                    moto_cpu.append(cost.cpu_seconds)
                    download_requests = cost
                    stored = s3_names(filesystem, output.removeprefix("s3://"))
                    attempts = [name for name in stored if name.startswith(".attempts/") or "/.attempts/" in name]
                    if attempts:
                        checks.append(f"round {round_index + 1}: {len(attempts)} .attempts/ objects left in {output}")
                    shards = len(result["shards"])
                    line += (f"; moto CPU {cost.cpu_seconds:.1f} s, {cost.total_requests} requests "
                             f"({cost.total_requests / shards:.1f} per shard: {cost.summary()}); "
                             f"{len(stored)} objects, {len(attempts)} under .attempts/")
                print(line, flush=True)
        local_stored = local_names(local_root)
        s3_stored = s3_names(filesystem, s3_root.removeprefix("s3://"))
        if local_stored != s3_stored:
            checks.append(f"file names differ: local only {sorted(set(local_stored) - set(s3_stored))}, "
                          f"S3 only {sorted(set(s3_stored) - set(local_stored))}")
        if len(set(successes["local"] + successes["s3"])) != 1:
            checks.append(f"success counts differ: local {successes['local']}, S3 {successes['s3']}")

        # --- stream: the local dataset and its S3 copy, fresh process per pass -----------------
        keys = [key for path in sorted(local_root.glob("*.parquet"))
                for key, status in zip(*pq.read_table(path, columns=["key", "status"]).to_pydict().values())
                if status == "success"]
        view_file = work / "view30.json"
        view_file.write_text(json.dumps(sorted(random.Random(0).sample(keys, round(len(keys) * 0.3)))))
        rates: dict[str, dict[str, list[float]]] = {name: {"local": [], "s3": []} for name in STREAM_MODES}
        opens: dict[str, dict[str, list[float]]] = {name: {"local": [], "s3": []} for name in STREAM_MODES}
        stream_moto: dict[str, list[float]] = {name: [] for name in STREAM_MODES}
        stream_requests: dict[str, object] = {}
        failures: dict[tuple[str, str], str] = {}
        for round_index in range(rounds):
            for name, (decode, fraction) in STREAM_MODES.items():
                for where in ("local", "s3") if round_index % 2 == 0 else ("s3", "local"):
                    if (name, where) in failures:
                        continue
                    spec = {"mode": "stream", "root": str(local_root) if where == "local" else s3_root,
                            "decode": decode, "min_seconds": min_seconds,
                            "view": str(view_file) if fraction else None}
                    slug = name.split(",")[0].split(" ")[0] + ("-view" if fraction else "")
                    mark = moto.mark()
                    try:
                        result = run_child(spec, work / f"stream-{slug}-{where}-{round_index + 1}.log")
                    except ChildFailed as error:
                        failures[(name, where)] = str(error)
                        print(f"round {round_index + 1} stream {name:<20} {where:<5} FAILED: {error}", flush=True)
                        continue
                    cost = moto.since(mark)
                    rate = result["samples"] / result["read_seconds"]
                    rates[name][where].append(rate)
                    opens[name][where].append(result["open_seconds"])
                    megabytes = result["bytes"] / result["read_seconds"] / 1e6
                    line = (f"round {round_index + 1} stream {name:<20} {where:<5} {rate:6.0f} samples/s "
                            f"({result['samples']} samples, {result['epochs']} epochs, {result['read_seconds']:.2f} s, "
                            f"{megabytes:.0f} MB/s; open {result['open_seconds']:.2f} s), "
                            f"loader CPU {result['read_cpu_seconds']:.1f} s")
                    if where == "s3":
                        stream_moto[name].append(cost.cpu_seconds / result["read_seconds"])
                        stream_requests[name] = cost
                        line += (f"; moto CPU {cost.cpu_seconds:.1f} s, {cost.total_requests} requests "
                                 f"({cost.summary()})")
                    print(line, flush=True)

    # --- the table and the goals --------------------------------------------------------------
    local_wall, s3_wall = median(downloads["local"]), median(downloads["s3"])
    figures = {
        "images": count, "rounds": rounds, "machine_busy_percent_before": idle_load,
        "quick": args.quick, "threads": args.threads, "processes": PROCESSES,
        "download": {"local_seconds": local_wall, "s3_seconds": s3_wall, "ratio": s3_wall / local_wall,
                     "local_command_seconds": median(commands["local"]), "s3_command_seconds": median(commands["s3"]),
                     "local_machine_cpu_seconds": median(machine_cpu["local"]),
                     "s3_machine_cpu_seconds": median(machine_cpu["s3"]), "moto_cpu_seconds": median(moto_cpu),
                     "s3_requests": dict(download_requests.requests), "successes": successes},
        "stream": {}, "checks": checks, "failures": {f"{n} {w}": e for (n, w), e in failures.items()},
    }
    print(f"\n{'':<38}{'local':>8}{'S3':>8}{'S3/local':>10}{'moto CPU':>10}{'S3 requests':>13}")
    print(f"{'download, s (median)':<38}{local_wall:>8.1f}{s3_wall:>8.1f}{s3_wall / local_wall:>9.2f}x"
          f"{median(moto_cpu):>8.1f} s{download_requests.total_requests:>13}")
    print(f"{'  whole command, s':<38}{median(commands['local']):>8.1f}{median(commands['s3']):>8.1f}"
          f"{median(commands['s3']) / median(commands['local']):>9.2f}x")
    print(f"{'  machine CPU (all processes), s':<38}{median(machine_cpu['local']):>8.1f}"
          f"{median(machine_cpu['s3']):>8.1f}{median(machine_cpu['s3']) / median(machine_cpu['local']):>9.2f}x")
    for name in STREAM_MODES:
        local_rate, s3_rate = median(rates[name]["local"]), median(rates[name]["s3"])
        ratio = s3_rate / local_rate if local_rate and s3_rate else None
        requests = stream_requests.get(name)
        figures["stream"][name] = {
            "local_samples_per_s": local_rate, "s3_samples_per_s": s3_rate, "ratio": ratio,
            "local_open_seconds": median(opens[name]["local"]), "s3_open_seconds": median(opens[name]["s3"]),
            "moto_cpu_per_read_second": median(stream_moto[name]),
            "s3_requests": dict(requests.requests) if requests else None,
        }
        moto_share = median(stream_moto[name])
        print(f"{'stream ' + name + ', samples/s':<38}{fmt(local_rate, '.0f'):>8}{fmt(s3_rate, '.0f'):>8}"
              f"{fmt(ratio, '.2f') + ('x' if ratio else ''):>10}"
              f"{fmt(None if moto_share is None else 100 * moto_share, '.0f') + '%':>10}"
              f"{requests.total_requests if requests else '-':>13}")
        print(f"{'  open (list + read parquets), s':<38}{fmt(median(opens[name]['local']), '.2f'):>8}"
              f"{fmt(median(opens[name]['s3']), '.2f'):>8}")
    print("(moto CPU: seconds per S3 download run; for the stream, CPU-seconds per second of reading, of one core. "
          f"S3 requests: the last S3 run or pass. Successes: local {successes['local']}, S3 {successes['s3']})")
    print()
    ratio = s3_wall / local_wall
    met = "MET" if ratio <= DOWNLOAD_GOAL else "NOT MET"
    print(f"download S3/local wall {ratio:.2f}x (goal <= {DOWNLOAD_GOAL}x) {met}"
          f"  [moto used {median(moto_cpu):.1f} CPU-s of the {s3_wall:.1f} s x {os.cpu_count()} cores]")
    for name in STREAM_MODES:
        entry = figures["stream"][name]
        failed = [error for (mode, _), error in failures.items() if mode == name]
        if entry["ratio"] is None:
            reason = failed[0] if failed else "no data"
            print(f"stream S3/local {name}: NOT MEASURED (goal >= {STREAM_GOAL}x): {reason}")
            continue
        met = "MET" if entry["ratio"] >= STREAM_GOAL else "NOT MET"
        print(f"stream S3/local {name} {entry['ratio']:.2f}x (goal >= {STREAM_GOAL}x) {met}"
              f"  [moto busy {100 * entry['moto_cpu_per_read_second']:.0f}% of one core while the loader read]")
    s3_ok = "same success count" if len(set(successes["local"] + successes["s3"])) == 1 else "DIFFERENT success counts"
    print("checks: " + ("; ".join(checks) if checks else f"no .attempts/ objects left on S3, same file names, {s3_ok}"))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 1 if checks else 0


if __name__ == "__main__":
    sys.exit(main())
