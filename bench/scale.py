"""Benchmark: every metadata stage at 1M, 10M and 100M rows, in bounded memory and linear time.

Builds metadata-only datasets with the real schemas (shards of 10,000 rows: metadata parquets and stats
files, one score table per shard, the language, image-quality and dedup annotation tables; no image
bytes; ``tests/metadata_corpus.py``), cached under ``.cache/scale/`` between runs, then runs each stage in
its own process under a memory watcher (the peak RSS of the process tree, sampled every 50 ms) and
prints a table of stage x rows with wall time and peak RSS, and the fitted exponent of time in rows.
Targets: every stage at 100M rows under 4 GB peak RSS, with a time exponent <= 1.15 from 1M to 100M.

    python bench/scale.py --quick                  # 1M rows only
    python bench/scale.py                          # 1M, 10M, 100M
    python bench/scale.py --rows 1M,10M --stages filter,table
    python bench/scale.py --rows 1M --code /tmp/old # the same stages with another checkout's mmdata
                                                    # (git archive HEAD | tar -x -C /tmp/old) for a before/after

A stage is a function of (dataset, scratch folder) in ``STAGES``; add one there and it gets a row. What a
stage needs beyond the metadata (hash caches, embeddings, a view) is a component, added to the cached
dataset on first use, outside the clock. A stage a checkout lacks (``--code`` older than it) is reported
as missing; a stage too slow here at some size (``largest``) is skipped there.
Memory figures hold on a busy machine; times do not: each line records the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "scale"
SIZES = {"1M": 1_000_000, "10M": 10_000_000, "100M": 100_000_000}
TARGET_GIB, TARGET_EXPONENT = 4.0, 1.15
LOADER_VIEW = "loader30"  # the loader's 30 % view, written once per dataset (tests/stream/scale_view.py)
DATA_VERSION = 1  # bump when tests/metadata_corpus.py changes what it writes


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[str, str], object]  # (dataset folder, scratch folder)
    what: str
    needs: tuple[str, ...] = ()  # COMPONENTS added to the dataset (once, outside the clock) before it runs
    largest: int | None = None  # rows beyond which it is not run here (and why, in the README's table)
    synthetic: bool = False  # makes its own input from the row count: no dataset is built for it
    figures: bool = False  # its result (figures beyond time and memory) is printed under the table


def _filter_rules(root: str, scratch: str) -> object:
    from mmdata.curate import view

    write = getattr(view, "write_view", None) or view.filter_view  # an older checkout has only filter_view
    return write(root, view="bench-rules", min_size=200, max_aspect_ratio=2.5, min_caption_words=3,
                 min_caption_chars=10)


def _filter_command(root: str, scratch: str) -> object:
    from mmdata.cli import main

    return main(["filter", root, "--view", "bench-command", "--min-size", "200", "--max-aspect-ratio", "2.5",
                 "--min-caption-words", "3", "--min-caption-chars", "10"])


def _filter_all(root: str, scratch: str) -> object:
    from mmdata.curate import view

    write = getattr(view, "write_view", None) or view.filter_view
    return write(root, view="bench-all", top_fraction=0.3, language="en,de", drop_duplicates=True,
                 where="laplacian_variance > 30 AND url NOT LIKE '%site3.test%'")


def _table(root: str, scratch: str) -> object:
    from mmdata.table import write_table

    return write_table(root, os.path.join(scratch, "table.parquet"))


def _report(root: str, scratch: str) -> object:
    from mmdata.report.html import write_report

    return write_report(root, os.path.join(scratch, "report.html"))


def _reshard_plan(root: str, scratch: str) -> object:
    from mmdata.curate.reshard import plan_reshard
    from mmdata.curate.view import read_view_rows, view_path

    if not view_path(root, "bench-rules").exists():  # the filter stage writes it; alone, this stage does
        _filter_rules(root, scratch)
    plan = plan_reshard(root, view="bench-rules", output=os.path.join(scratch, "resharded"), shard_size=10_000)
    last = len(plan.names) - 1  # what one task reads: its row range of the view
    rows = read_view_rows(plan.view_file, last * plan.shard_size, plan.shard_size,
                          ["key", "shard", "tar_offset", "tar_size"])
    return f"{plan.samples} rows, {len(plan.names)} shards, last {rows.num_rows}"


def _balance(root: str, scratch: str) -> object:
    sys.path.insert(0, str(REPO / "tests"))
    from metadata_corpus import WORDS

    from mmdata.curate.balance import balance

    words = [str(word) for word in WORDS]  # every caption word, and every two-word phrase of them
    entries = os.path.join(scratch, "entries.txt")
    Path(entries).write_text("\n".join([*words, *(f"{a} {b}" for a in words for b in words)]) + "\n")
    result = balance(root, metadata=entries, t=20_000, view="bench-balance", executor="processes")
    return f"{result.rows} of {result.funnel['rows_in']} rows kept"


def _loader(root: str, scratch: str, view: str | None = None) -> object:
    """One rank of 8 up to its first tar read: catalog (per-shard counts), its epoch plan, the first shard's rows."""
    import mmdata
    from mmdata.stream import partition
    from mmdata.stream.rows import ShardRows

    dataset = mmdata.stream(root, view=view, rank=3, world_size=8, decode=None)
    catalog = dataset.catalog
    plan = partition.worker_plan(catalog.shard_sizes, seed=0, epoch=0, shuffle=True, world_size=8, rank=3,
                                 num_workers=1, worker=0, buffer_size=dataset.options.shuffle_buffer)
    next(iter(plan.emission()))
    shard = int(plan.segments[0, 0])
    rows = ShardRows(dataset.source, catalog.selection, catalog.columns, catalog.shards).read(
        catalog.shards[shard], int(catalog.shard_sizes[shard]))
    return f"{len(dataset):,} of {len(catalog):,} samples, first shard {rows.num_rows} rows"


def _loader_view(root: str, scratch: str) -> object:
    return _loader(root, scratch, view=LOADER_VIEW)


def _dedup(root: str, scratch: str, near: bool = True) -> object:
    """dedup over the hash caches of tests/hash_corpus.py; the corpus's own dedup.parquet (which
    filter-all reads) is put back afterwards."""
    from mmdata.curate.dedup import dedup

    table = os.path.join(root, "annotations", "dedup.parquet")
    aside = os.path.join(root, "annotations", ".dedup-bench-aside")
    os.replace(table, aside)
    try:
        return dedup(root, exact=True, near=near, scratch_dir=scratch, executor="inline").counts
    finally:
        os.replace(aside, table)


def _dedup_exact(root: str, scratch: str) -> object:
    return _dedup(root, scratch, near=False)


def _semantic(root: str, scratch: str) -> object:
    """dedup's semantic tier alone over the bench-embed embeddings (512-d float16, 5 % planted copies)."""
    from mmdata.curate.dedup import dedup

    result = dedup(root, exact=False, semantic=True, model="bench-embed", scratch_dir=scratch, executor="inline")
    return result.counts


def _index(root: str, scratch: str) -> object:
    from mmdata.search.index import build_index

    info = build_index(root, model="bench-embed", force=True, executor="inline")
    return {"count": info.count, "factory": info.report["plan"]["factory"], "tuned_recall": info.report["tuned_recall"]}


NEAR_RADIUS, NEAR_PLANTED, NEAR_CHECKED = 8, 0.02, 20_000  # near-search: radius, planted copies, brute-forced rows


def _near_codes(rows: int, folder: str) -> tuple[object, np.ndarray]:
    """A NearSearch spill of ``rows`` synthetic rows, written 250,000 rows at a time: random pHash and mirror,
    crops = the pHash with 2-6 random bits flipped; ~2 % of rows are copies of a row up to 5,000 rows before
    with 0-8 bits flipped (crops included). Returns it and the planted pairs (source, copy, distance)."""
    from mmdata.curate.dedup_near import NearSearch
    from mmdata.curate.hashes import NearHashes
    from mmdata.schemas.hashes import CROP_COUNT

    search, planted, chunk = NearSearch(folder), [], 250_000
    for start in range(0, rows, chunk):
        size = min(chunk, rows - start)
        rng = np.random.default_rng([17, start // chunk])
        phash = rng.integers(0, 2**64, size, dtype=np.uint64)
        copies = np.flatnonzero(rng.random(size) < NEAR_PLANTED)
        copies = copies[copies > 0]
        sources = np.maximum(0, copies - rng.integers(1, 5_001, len(copies)))
        distance = rng.integers(0, NEAR_RADIUS + 1, len(copies))
        for copy, source, flips in zip(copies, sources, _exact_flips(rng, distance)):  # in row order: chains too
            phash[copy] = phash[source] ^ flips
        spots = rng.integers(0, 64, (size * CROP_COUNT, 6)).astype(np.uint64)
        spots = np.where(np.arange(6) < rng.integers(2, 7, (size * CROP_COUNT, 1)), np.uint64(1) << spots, 0)
        crops = phash[:, None] ^ np.bitwise_or.reduce(spots, axis=1).reshape(size, CROP_COUNT)
        mirror = rng.integers(0, 2**64, size, dtype=np.uint64)
        search.add(size, np.arange(size), NearHashes(phash, crops, np.zeros((size, 6), np.float32), mirror=mirror))
        planted.append(np.stack([sources + start, copies + start, distance], axis=1))
    search.close()
    return search, np.concatenate(planted)


def _exact_flips(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """uint64 masks with ``counts`` distinct random bits set."""
    chosen = np.argsort(rng.random((len(counts), 64)), axis=1) < counts[:, None]
    return np.bitwise_or.reduce(np.where(chosen, np.uint64(1) << np.arange(64, dtype=np.uint64), np.uint64(0)), axis=1)


def _brute_pairs(search, start: int, stop: int) -> np.ndarray:
    """The pairs (a < b, as a * 2**32 + b) among rows ``start:stop`` within the radius, by a full scan."""
    rows = np.arange(start, stop)
    phash = search.spill.take("phash", rows)
    mirror = search.spill.take("mirror", rows)
    every = np.concatenate([phash[:, None], search.spill.take("crops", rows), mirror[:, None]], axis=1)
    pairs = []
    for first in range(0, len(rows), 100):
        distance = np.bitwise_count(phash[first:first + 100, None, None] ^ every[None])
        query, indexed = np.nonzero((distance <= NEAR_RADIUS).any(axis=2))
        query += first
        pairs.append(np.minimum(query, indexed) * 2**32 + np.maximum(query, indexed))
    pairs = np.unique(np.concatenate(pairs))
    low, high = pairs // 2**32, pairs % 2**32
    return (low[low != high] + start) * 2**32 + high[low != high] + start


def _near_search(root: str, scratch: str, near_recall: float = 0.95) -> object:
    """The near tier's search (radius 8, mirrors, default block_rows) on synthetic 64-bit hashes; figures: the
    share of the planted pairs found (all, and those at distance 8), and of the pairs a brute-force scan
    finds among 20,000 consecutive rows."""
    from mmdata.curate.dedup import DedupConfig

    rows, block_rows = _rows(Path(root)), DedupConfig().block_rows
    folder = os.path.join(scratch, "near")
    search, planted = _near_codes(rows, folder)
    started = time.perf_counter()
    left, right = search.candidates(NEAR_RADIUS, mirrors=True, block_rows=block_rows, near_recall=near_recall)
    seconds = time.perf_counter() - started
    found = left * 2**32 + right
    hit = np.isin(np.minimum(planted[:, 0], planted[:, 1]) * 2**32 + np.maximum(planted[:, 0], planted[:, 1]), found)
    window = int(np.random.default_rng(3).integers(0, max(1, rows - NEAR_CHECKED)))
    brute = _brute_pairs(search, window, min(rows, window + NEAR_CHECKED))
    inside = found[(left >= window) & (right < window + NEAR_CHECKED)]
    keys = search.keys(NEAR_RADIUS, mirrors=True, block_rows=block_rows, near_recall=near_recall)
    shutil.rmtree(folder)
    plan = f"{len(keys)} keys of {keys[0][0].width} bits, {keys[0][1]} flipped"
    return {"search_s": round(seconds, 1), "plan": plan, "pairs": len(found), "planted": len(planted),
            "planted_recall": round(float(hit.mean()), 4),
            "recall_at_8": round(float(hit[planted[:, 2] == NEAR_RADIUS].mean()), 4),
            "brute_pairs": len(brute), "brute_recall": round(float(np.isin(brute, found).mean()), 4),
            "subset_of_brute": bool(np.isin(inside, brute).all())}


def _near_search_exact(root: str, scratch: str) -> object:
    return _near_search(root, scratch, near_recall=1.0)


STAGES = {stage.name: stage for stage in (
    Stage("filter", _filter_rules, "size and caption rules (the issue's measurement)"),
    Stage("filter-cli", _filter_command, "the same rules through `mmdata filter` (what the command holds)"),
    Stage("filter-all", _filter_all, "top_fraction 0.3, language, drop_duplicates, --where"),
    Stage("table", _table, "mmdata table: every column to one parquet"),
    Stage("reshard-plan", _reshard_plan, "reshard's plan: streamed keys digest, one task's row range"),
    # caption matching runs ~110 s per 1M rows on 2 cores: hours at 100M
    Stage("balance", _balance, "MetaCLIP balance, 2,550 entries, t=20000, view streamed from parts",
          largest=10_000_000),
    # the hash corpus takes ~2 min per 1M rows to write; the near tier's exact search is quadratic
    Stage("dedup-exact", _dedup_exact, "dedup, exact tier (sha256 and pixel hash partitions)", ("hashes",),
          largest=10_000_000),
    Stage("dedup", _dedup, "dedup, exact + near tiers (pHash, crops, mirrors; blocked band search)", ("hashes",),
          largest=1_000_000),
    # the embeddings take ~1 GB and ~6 min per 1M rows to write, in a dataset of their own (ROWS-embed)
    Stage("semantic", _semantic, "dedup --semantic: SemDeDup over 512-d float16 embeddings", ("embeddings",),
          largest=10_000_000),
    Stage("index", _index, "mmdata index: IVF-PQ trained on a sample, vectors added in batches", ("embeddings",),
          largest=10_000_000),
    # one index up to 32M rows: ~1 min at 1M, ~25 min at 10M on 2 cores; at 100M four indexes each meet every
    # query (15-20 h here by the 10M figure, and an 8.8 GB spill); generation ~20 s per 1M rows
    Stage("near-search", _near_search, "near dedup's search, near_recall 0.95, synthetic 64-bit hashes",
          synthetic=True, figures=True, largest=10_000_000),
    # quadratic: ~2 min per (1M rows)^2 on 2 cores
    Stage("near-search-exact", _near_search_exact, "the same, exact (near_recall 1.0)", synthetic=True,
          figures=True, largest=1_000_000),
    Stage("loader", _loader, "one rank of 8: catalog and plan up to its first read (no tars: no decode)"),
    Stage("loader-view", _loader_view, "the same on a 30 % view of the stored samples", ("loader-view",)),
    Stage("report", _report, "the HTML report (aggregates; thumbnails absent: no tars)"),
)}


def dataset(rows: int) -> Path:
    """The cached dataset of ``rows`` rows, built on first use (minutes per 10M rows)."""
    sys.path.insert(0, str(REPO / "tests"))
    from metadata_corpus import CorpusSpec, write_corpus

    spec = CorpusSpec(rows=rows)
    root = CACHE / f"{rows}"
    marker = root / "bench-complete.json"
    wanted = {"version": DATA_VERSION, "spec": repr(spec)}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return root
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    print(f"building {rows:,} rows under {root} ...", file=sys.stderr, flush=True)
    write_corpus(root, spec)
    seconds = time.perf_counter() - started
    marker.write_text(json.dumps(wanted))
    print(f"built {rows:,} rows in {seconds:.0f} s ({_size(root) / 2**30:.1f} GiB)", file=sys.stderr, flush=True)
    return root


def _add_loader_view(root: Path) -> object:
    sys.path.insert(0, str(REPO / "tests" / "stream"))
    from scale_view import add_view

    return add_view(root, LOADER_VIEW)


def _add_hashes(root: Path) -> object:
    sys.path.insert(0, str(REPO / "tests"))
    from hash_corpus import write_hash_corpus

    return write_hash_corpus(root)


def _embedded_dataset(root: Path) -> Path:
    """A copy of the corpus's spec without annotations, with the bench-embed score run (512-d embeddings):
    a dataset of its own, so the other stages' datasets keep their columns."""
    sys.path.insert(0, str(REPO / "tests"))
    from embedding_corpus import add_embeddings
    from metadata_corpus import CorpusSpec, write_corpus

    embedded = root.parent / f"{root.name}-embed"
    shutil.rmtree(embedded, ignore_errors=True)
    write_corpus(embedded, CorpusSpec(rows=_rows(root), annotations=False))
    return add_embeddings(embedded)


# what some stages need beyond the metadata corpus, built on first use (marker: bench-<name>.json); the
# embeddings are a dataset of their own, which the stages needing them run on
COMPONENTS = {"loader-view": _add_loader_view, "hashes": _add_hashes, "embeddings": _embedded_dataset}


def add_component(root: Path, name: str) -> Path:
    """Add component ``name`` to ``root`` once; the dataset a stage needing it runs on."""
    target = root.parent / f"{root.name}-embed" if name == "embeddings" else root
    marker = target / f"bench-{name}.json"
    if marker.exists():
        return target
    started = time.perf_counter()
    print(f"adding {name} to {root} ...", file=sys.stderr, flush=True)
    outcome = COMPONENTS[name](root)
    marker.write_text(json.dumps({"outcome": str(outcome), "seconds": round(time.perf_counter() - started)}))
    print(f"added {name} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return target


def measure(stage: str, root: Path, code: Path | None) -> dict:
    """Run ``stage`` in a child process; its wall time and the peak RSS of its process tree."""
    import psutil

    environment = dict(os.environ)
    if code is not None:
        environment["PYTHONPATH"] = f"{code}{os.pathsep}{environment.get('PYTHONPATH', '')}"
    with tempfile.TemporaryDirectory(prefix="mmdata-scale-") as scratch:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", stage, str(root), scratch]
        started = time.perf_counter()
        child = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watched, peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            try:
                tree = [watched, *watched.children(recursive=True)]
                peak = max(peak, sum(_rss(process) for process in tree))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.05)  # sampling a running process: there is nothing to wait on
        seconds = time.perf_counter() - started
        output, errors = child.communicate()
    result = {"stage": stage, "rows": _rows(root), "seconds": round(seconds, 2), "peak_mib": round(peak / 2**20),
              "load": os.getloadavg()[0], "code": str(code) if code else "working tree"}
    if child.returncode:
        result["error"] = (errors.strip().splitlines() or ["?"])[-1]
    else:
        result["result"] = output.strip().splitlines()[-1] if output.strip() else ""
    return result


def _rss(process) -> int:
    import psutil

    try:
        return process.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def _rows(root: Path) -> int:
    return int(root.name.split("-")[0])  # ROWS or ROWS-embed


def _size(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def exponent(points: list[tuple[int, float]]) -> float | None:
    """The least-squares slope of log(seconds) in log(rows)."""
    if len({rows for rows, _ in points}) < 2:
        return None
    xs = [math.log(rows) for rows, _ in points]
    ys = [math.log(max(seconds, 1e-3)) for _, seconds in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


def print_table(results: list[dict]) -> None:
    sizes = sorted({result["rows"] for result in results})
    print(f"\n{'stage':<12}" + "".join(f"{_label(rows):>22}" for rows in sizes) + f"{'exponent':>10}")
    for stage in dict.fromkeys(result["stage"] for result in results):
        cells, points, peaks = [], [], []
        for rows in sizes:
            found = [r for r in results if r["stage"] == stage and r["rows"] == rows]
            if not found:
                cells.append(f"{'-':>22}")
                continue
            result = found[-1]
            if "error" in result:
                cells.append(f"{'failed':>22}")
                continue
            points.append((rows, result["seconds"]))
            peaks.append((rows, result["peak_mib"]))
            cells.append(f"{result['seconds']:>9.1f} s {result['peak_mib']:>6,} MiB")
        slope = exponent(points)
        print(f"{stage:<12}" + "".join(cells) + (f"{slope:>10.2f}" if slope is not None else f"{'-':>10}"))
        largest = max(peaks) if peaks else None
        if largest and largest[0] >= SIZES["100M"] and largest[1] > TARGET_GIB * 1024:
            print(f"  over target: {largest[1]:,} MiB at {_label(largest[0])} (target {TARGET_GIB} GiB)")
        if slope is not None and slope > TARGET_EXPONENT:
            print(f"  over target: time exponent {slope:.2f} (target <= {TARGET_EXPONENT})")
    loads = [result["load"] for result in results]
    print(f"\nload average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
    for result in results:
        if "error" in result:
            print(f"{result['stage']} at {_label(result['rows'])} failed: {result['error']}")
        elif STAGES[result["stage"]].figures:
            print(f"{result['stage']} at {_label(result['rows'])}: {result['result']}")


def _label(rows: int) -> str:
    return next((name for name, value in SIZES.items() if value == rows), f"{rows:,}")


def _child(stage: str, root: str, scratch: str) -> None:
    outcome = STAGES[stage].run(root, scratch)
    rows = getattr(outcome, "rows", None) or getattr(outcome, "num_rows", None)
    print(f"{stage}: {rows if rows is not None else outcome}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1M rows only")
    parser.add_argument("--rows", default="1M,10M,100M", help="comma-separated sizes among 1M, 10M, 100M")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, among {', '.join(STAGES)}")
    parser.add_argument("--code", type=Path, help="run the stages with the mmdata of this checkout instead")
    parser.add_argument("--results", type=Path, default=CACHE / "results.jsonl", help="append each result here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.child:
        _child(*arguments.child)
        return []
    names = ["1M"] if arguments.quick else [name.strip() for name in arguments.rows.split(",") if name.strip()]
    unknown = [name for name in names if name not in SIZES] + [
        name for name in arguments.stages.split(",") if name not in STAGES]
    if unknown:
        parser.error(f"unknown sizes or stages {unknown}; sizes: {list(SIZES)}, stages: {list(STAGES)}")
    code = arguments.code.resolve() if arguments.code else None
    if code is not None and not (code / "mmdata").is_dir():
        parser.error(f"--code {code}: no mmdata package there")
    if code is not None and not (code / "mmdata" / "schemas").exists():
        (code / "mmdata" / "schemas").symlink_to(code / "schemas")  # as the editable install maps it
    results = []
    arguments.results.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        root = None
        for stage in arguments.stages.split(","):
            if STAGES[stage].largest is not None and SIZES[name] > STAGES[stage].largest:
                print(f"{stage}: not run at {name} (largest here: {_label(STAGES[stage].largest)})", file=sys.stderr)
                continue
            if STAGES[stage].synthetic:
                stage_root = CACHE / f"{SIZES[name]}"  # names the size only: not built
            else:
                root = root or dataset(SIZES[name])
                stage_root = root
            for component in STAGES[stage].needs:
                stage_root = add_component(root, component)
            result = measure(stage, stage_root, code)
            results.append(result)
            with open(arguments.results, "a") as handle:
                handle.write(json.dumps(result) + "\n")
            print(json.dumps(result), file=sys.stderr, flush=True)
    print_table(results)
    return results


if __name__ == "__main__":
    main()
