"""Benchmark ``mmdata score`` against the bare model: images/s of the whole pipeline (tar read,
decode, preprocess, tokenise, both towers, parquet write, Ray) over the model's own forward pass on
already-decoded, already-tokenised inputs at the same batch size and device (the ceiling).

    python bench/score.py --quick                     # a smoke run (minutes on 2 busy cores)
    python bench/score.py                             # CPU: ViT-B-32 (random weights) and a tiny model
    python bench/score.py --device cuda --precision fp16 --batch-size 256
    python bench/score.py --clip-retrieval            # also clip-retrieval's inference, side venv

Prints one line per model and a JSON summary (``--json`` writes it to a file).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, side_venv, timed_run  # noqa: E402

BENCH_DIR = WORK / "score"
CAPTION_WORDS = "a photo of red green blue small large dog cat house tree car street beach mountain at night".split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the speed")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--batch-size", type=int, help="default 64 on CPU, 256 on GPU")
    parser.add_argument("--models", default="ViT-B-32,tiny", help="comma-separated: ViT-B-32 and/or tiny")
    parser.add_argument("--samples", type=int, help="samples per model (default: by device and model)")
    parser.add_argument("--clip-retrieval", action="store_true", help="also time clip-retrieval inference (side venv)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    arguments = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

    import torch

    from mmdata.execution import ExecutionConfig, open_executor

    batch_size = arguments.batch_size or (256 if arguments.device == "cuda" else 64)
    if arguments.quick:
        batch_size = min(batch_size, 16)
    torch.set_num_threads(os.cpu_count())
    results = []
    started = time.perf_counter()
    with open_executor(ExecutionConfig(executor="ray")) as executor:
        ray_seconds = time.perf_counter() - started
        for model_name in arguments.models.split(","):
            samples = arguments.samples or _default_samples(model_name, arguments.device, arguments.quick)
            dataset = _dataset(samples, shard_size=min(samples, 1000 if arguments.device == "cuda" else 256))
            model, pretrained = _model(model_name)
            ceiling = bare_forward(
                model, dataset, batch_size, arguments.device, arguments.precision, quick=arguments.quick
            )
            pipeline = run_pipeline(model, dataset, batch_size, arguments.device, arguments.precision, executor)
            row = {
                "model": model_name,
                "device": arguments.device,
                "precision": arguments.precision,
                "batch_size": batch_size,
                "samples": samples,
                "cpus": os.cpu_count(),
                "bare_forward_images_per_s": round(ceiling, 2),
                **pipeline,
                "ratio_steady": round(pipeline["pipeline_images_per_s"] / ceiling, 3),
                "ratio_end_to_end": round(pipeline["end_to_end_images_per_s"] / ceiling, 3),
            }
            if arguments.clip_retrieval:
                row.update(run_clip_retrieval(model_name, dataset, batch_size, arguments.device, ceiling))
            results.append(row)
            print(
                f"{model_name:9s} {arguments.device}/{arguments.precision} batch {batch_size}: bare forward "
                f"{ceiling:8.1f} img/s | pipeline {row['pipeline_images_per_s']:8.1f} img/s "
                f"(ratio {row['ratio_steady']:.3f}); end to end incl. actor start and model load "
                f"{row['end_to_end_images_per_s']:8.1f} img/s (ratio {row['ratio_end_to_end']:.3f})",
                flush=True,
            )
    summary = {"quick": arguments.quick, "ray_start_seconds": round(ray_seconds, 2), "results": results}
    print(json.dumps(summary, indent=2))
    if arguments.json:
        arguments.json.write_text(json.dumps(summary, indent=2))
    return 0


def _default_samples(model_name: str, device: str, quick: bool) -> int:
    if quick:
        return 48 if model_name == "ViT-B-32" else 256
    if device == "cuda":
        return 40_000
    return 1024 if model_name == "ViT-B-32" else 8_000


def _model(model_name: str) -> tuple[str, None]:
    """ViT-B-32 by name (random weights: speed does not depend on them) or the tiny config file."""
    if model_name == "ViT-B-32":
        return "ViT-B-32", None
    if model_name == "tiny":
        from mmdata.score.model import tiny_model_config, write_model_config

        return str(write_model_config(BENCH_DIR / "tiny.json", tiny_model_config())), None
    raise SystemExit(f"unknown model {model_name!r}: use ViT-B-32 or tiny")


# --- data ---------------------------------------------------------------------------------------


def _dataset(samples: int, shard_size: int) -> Path:
    """A dataset of 256 px JPEGs like a download writes (made once, reused)."""
    root = BENCH_DIR / f"data-{samples}-{shard_size}"
    shards = (samples + shard_size - 1) // shard_size
    from mmdata import layout

    if len(layout.complete_shards(root)) == shards:
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    jobs = [(str(root), shard, min(shard_size, samples - shard * shard_size), shard_size) for shard in range(shards)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_write_shard, *zip(*jobs)))
    return root


def _write_shard(root: str, shard: int, count: int, shard_size: int) -> None:
    from PIL import Image

    from mmdata import layout
    from mmdata.shard_output import shard_output

    rng = np.random.default_rng(shard)
    with shard_output(root, shard) as output:
        for row in range(count):
            # smooth colour fields plus noise: JPEGs of a realistic size (~15-30 KB at 256 px)
            base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            pixels = np.asarray(Image.fromarray(base).resize((256, 256), Image.BICUBIC), dtype=np.int16)
            pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
            caption = " ".join(rng.choice(CAPTION_WORDS, size=int(rng.integers(4, 14))))
            key = layout.sample_key(shard, row, shard_size)
            output.add({"key": key, "uid": key, "caption": caption, "status": "success", "width": 256, "height": 256},
                       {"jpg": buffer.getvalue(), "txt": caption.encode()})
        output.commit({"shard": layout.shard_name(shard), "count": count, "successes": count})


# --- the ceiling --------------------------------------------------------------------------------


def bare_forward(model: str, dataset: Path, batch_size: int, device: str, precision: str, *, quick: bool) -> float:
    """images/s of encode_image + encode_text (+ normalise, dot) on inputs decoded and tokenised
    beforehand and already on the device."""
    import torch
    from PIL import Image

    from mmdata.score.model import load_clip
    from mmdata.shards import iter_samples

    clip = load_clip(model, None, device=device, precision=precision)
    batches_wanted = 2 if quick else (4 if device == "cpu" and model == "ViT-B-32" else 20)
    images, captions = [], []
    for tar in sorted(dataset.glob("*.tar")):
        for _, members in iter_samples(tar):
            images.append(clip.preprocess(Image.open(io.BytesIO(members["jpg"]))))
            captions.append(members["txt"].decode())
            if len(images) == batch_size * (batches_wanted + 1):
                break
        if len(images) == batch_size * (batches_wanted + 1):
            break
    batches = [
        (
            torch.stack(images[i : i + batch_size]).to(clip.device),
            clip.tokenizer(captions[i : i + batch_size]).to(clip.device),
        )
        for i in range(0, len(images) - batch_size + 1, batch_size)
    ]

    encode_images, encode_texts = clip.encode_images, clip.encode_texts

    def forward(pixels, tokens):
        scores = (encode_images(pixels) * encode_texts(tokens)).sum(-1)
        return scores.cpu()

    forward(*batches[0])  # warm-up (kernels, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for pixels, tokens in batches[1:]:
        forward(pixels, tokens)
    seconds = time.perf_counter() - started
    del clip, batches
    return batch_size * (len(images) // batch_size - 1) / seconds


# --- mmdata score -------------------------------------------------------------------------------


def run_pipeline(model: str, dataset: Path, batch_size: int, device: str, precision: str, executor) -> dict:
    import mmdata
    from mmdata.score.model import resolve_model

    shutil.rmtree(dataset / "scores" / resolve_model(model).model_id, ignore_errors=True)
    started = time.perf_counter()
    summary = mmdata.score(dataset=str(dataset), model=model, batch_size=batch_size, device=device,
                           precision=precision, show_progress=False, execution=executor)
    wall = time.perf_counter() - started
    samples = summary["counts"]["samples"]
    actors = max(1, len(summary["actors"]))
    return {
        # inside the actor, per shard: tar read, decode, model, parquet write (Ray start excluded)
        "pipeline_images_per_s": round(samples / (summary["actor_seconds"] / actors), 2),
        "end_to_end_images_per_s": round(samples / wall, 2),
        "end_to_end_seconds": round(wall, 2),
        "actor": summary["actors"][0],
    }


# --- clip-retrieval -----------------------------------------------------------------------------


def run_clip_retrieval(model: str, dataset: Path, batch_size: int, device: str, ceiling: float) -> dict:
    """clip-retrieval's ``inference`` on the same tars, in its own venv (it pins pandas<3,
    webdataset<0.3, pyarrow<16, numpy<2). It loads open_clip weights by tag, so the tag's file is
    planted, with random weights, in a private Hugging Face cache for this run only."""
    if model != "ViT-B-32":
        return {"clip_retrieval": "not run: it loads models by name and tag only"}
    try:
        # clip (via all_clip) imports pkg_resources, gone from recent setuptools
        bin_dir = side_venv("clip-retrieval", ["clip-retrieval==2.45.0", "setuptools<70"])
    except Exception as error:  # noqa: BLE001 - a failed install is a result to report
        return {"clip_retrieval": f"not run: install failed ({error})"}
    hf_home = BENCH_DIR / "hf-home"
    _plant_random_vit_b_32(hf_home)
    output = BENCH_DIR / "clip-retrieval-out"
    shutil.rmtree(output, ignore_errors=True)
    tars = sorted(path.stem for path in dataset.glob("*.tar"))
    pattern = str(dataset / (f"{{{tars[0]}..{tars[-1]}}}.tar" if len(tars) > 1 else f"{tars[0]}.tar"))
    command = [
        str(bin_dir / "clip-retrieval"), "inference", "--input_format", "webdataset",
        "--input_dataset", pattern,
        "--output_folder", str(output), "--batch_size", str(batch_size),
        "--num_prepro_workers", str(min(os.cpu_count(), len(tars))),
        "--enable_text", "True", "--enable_image", "True", "--enable_metadata", "False",
        "--clip_model", "open_clip:ViT-B-32/laion2b_s34b_b79k", "--use_jit", "False",
    ]
    environment = {
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "" if device == "cpu" else os.environ.get("CUDA_VISIBLE_DEVICES", "0"),
    }
    try:
        seconds = timed_run(command, environment=environment, log=BENCH_DIR / "clip-retrieval.log")
    except RuntimeError as error:
        return {"clip_retrieval": f"failed: {error}"}
    samples = sum(1 for tar in dataset.glob("*.tar") for _ in _tar_keys(tar))
    return {
        "clip_retrieval_end_to_end_images_per_s": round(samples / seconds, 2),
        "clip_retrieval_ratio_end_to_end": round(samples / seconds / ceiling, 3),
    }


def _tar_keys(tar: Path):
    from mmdata.shards import iter_samples

    for key, _ in iter_samples(tar):
        yield key


def _plant_random_vit_b_32(hf_home: Path) -> None:
    """Random ViT-B-32 weights where hf_hub_download looks for laion2b_s34b_b79k, offline."""
    import torch

    from mmdata.score.model import load_clip

    repo = hf_home / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    snapshot = repo / "snapshots" / ("0" * 40)
    target = snapshot / "open_clip_pytorch_model.bin"
    if target.exists():
        return
    snapshot.mkdir(parents=True, exist_ok=True)
    torch.save(load_clip("ViT-B-32").model.state_dict(), target)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)


if __name__ == "__main__":
    sys.exit(main())
