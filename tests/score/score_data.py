"""Small datasets built with ShardOutput and PIL, and open_clip's own reference scores for them."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image

from mmdata import layout
from mmdata.shard_output import shard_output

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def image_bytes(colour: tuple[int, int, int], size: tuple[int, int], seed: int, image_format: str = "JPEG") -> bytes:
    """A coloured picture with a little noise, so no two samples embed the same."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, colour)
    for _ in range(40):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        image.putpixel((x, y), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    out = io.BytesIO()
    image.save(out, format=image_format, quality=90)
    return out.getvalue()


SIZES = ((80, 64), (64, 96), (120, 120))  # wider, taller and square than the model's 64 px: crops differ


def build_dataset(
    root: layout.Root, *, shards: int = 2, per_shard: int = 6, broken: frozenset[str] = frozenset()
) -> list[str]:
    """Write ``shards`` complete shards with ShardOutput; one failed row per shard (no members).

    Keys in ``broken`` get an undecodable image. Returns the keys of the stored samples.
    """
    stored = []
    names = list(COLOURS)
    for shard in range(shards):
        with shard_output(root, shard) as output:
            for row in range(per_shard + 1):
                key = layout.sample_key(shard, row, per_shard + 1)
                url = f"http://127.0.0.1/{key}.jpg"
                if row == per_shard:  # a failed download: a row without tar members
                    output.add({"key": key, "uid": layout.sample_uid(url, None), "url": url,
                                "status": "failed_to_download", "error_message": "HTTP 404"})
                    continue
                colour = names[(shard + row) % len(names)]
                caption = f"a {colour} square number {row}"
                size = SIZES[row % len(SIZES)]
                data = (
                    b"not an image at all" if key in broken
                    else image_bytes(COLOURS[colour], size, seed=shard * 100 + row)
                )
                output.add(
                    {"key": key, "uid": layout.sample_uid(url, caption), "url": url, "caption": caption,
                     "status": "success"},
                    {"jpg": data, "txt": caption.encode(), "json": json.dumps({"key": key}).encode()},
                )
                stored.append(key)
            output.commit({"shard": layout.shard_name(shard), "count": per_shard + 1, "successes": per_shard})
    return stored


def reference_scores(config_path: Path, checkpoint: Path, tar_path: Path) -> dict[str, float]:
    """open_clip's own computation: its eval transform on the stored image, its tokenizer on the
    stored caption, encode_image / encode_text, normalised dot product, fp32 on CPU."""
    import open_clip
    import torch

    from mmdata.shards import iter_samples

    open_clip.add_model_config(config_path)
    model, _, preprocess = open_clip.create_model_and_transforms(config_path.stem, pretrained=str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer(config_path.stem)
    scores = {}
    with torch.no_grad():
        for key, members in iter_samples(tar_path):
            try:
                pixels = preprocess(Image.open(io.BytesIO(members["jpg"])))
            except Exception:  # undecodable: the pipeline gives it a null score
                continue
            image = torch.nn.functional.normalize(model.encode_image(pixels[None]), dim=-1)
            text = torch.nn.functional.normalize(model.encode_text(tokenizer([members["txt"].decode()])), dim=-1)
            scores[key] = float((image * text).sum())
    return scores
