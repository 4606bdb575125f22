"""A procedurally drawn test corpus with planted duplicates of every kind and look-alike non-duplicates.

Each *base* scene is a background colour and a few coloured shapes. Variants of a base are the planted
duplicates; ``lookalike`` images reuse a base's colours with other shapes and are NOT duplicates.
A ``redraw`` is the same scene drawn again: the same shapes in the same colours, laid out anew.
Pixel hashes cannot see that (its pHash is as far as an unrelated picture's), a trained CLIP would;
without a trained model, the semantic tier's test embeddings stand in for one: a fixed random
projection of a *scene descriptor* (per shape kind: count and summed colour; the background colour)
plus independent per-image noise, so every picture of a scene sits at cosine ~0.97-0.99 from the
others and a same-colour, other-shape scene well below 0.95.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("ellipse", "rectangle", "triangle", "cross")
NEAR_KINDS = ("jpeg", "resize", "crop", "colour")
EXACT_KINDS = ("copy", "png_resave")
SEMANTIC_KINDS = ("redraw",)


@dataclass(frozen=True)
class Shape:
    kind: str
    box: tuple[int, int, int, int]
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    size: tuple[int, int]
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]


@dataclass(frozen=True)
class Planted:
    """One image of the corpus: its bytes, the base it derives from and how (``kind``)."""

    name: str
    base: int
    kind: str  # "original", an EXACT/NEAR/SEMANTIC kind, "lookalike" (base = the scene it imitates) or "unique"
    image: bytes
    image_format: str
    scene: Scene


def random_scene(rng: np.random.Generator) -> Scene:
    width, height = int(rng.integers(112, 176)), int(rng.integers(112, 176))
    background = tuple(int(c) for c in rng.integers(0, 256, 3))
    palette = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(3)]
    shapes = tuple(_random_shape(rng, width, height, palette[i % 3]) for i in range(int(rng.integers(3, 6))))
    return Scene((width, height), background, shapes)


def lookalike(scene: Scene, rng: np.random.Generator) -> Scene:
    """Same size, background and colours; every shape of another kind, in another place."""
    width, height = scene.size
    shapes = []
    for shape in scene.shapes:
        other = SHAPES[(SHAPES.index(shape.kind) + int(rng.integers(1, len(SHAPES)))) % len(SHAPES)]
        drawn = _random_shape(rng, width, height, shape.colour)
        shapes.append(Shape(other, drawn.box, shape.colour))
    return Scene(scene.size, scene.background, tuple(shapes))


def redraw(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene drawn again: the same shapes and colours (nudged), each at a new place and size."""
    width, height = scene.size
    shapes = []
    for shape in scene.shapes:
        colour = tuple(int(np.clip(c + rng.integers(-6, 7), 0, 255)) for c in shape.colour)
        shapes.append(Shape(shape.kind, _random_shape(rng, width, height, colour).box, colour))
    return Scene(scene.size, scene.background, tuple(shapes))


def _random_shape(rng: np.random.Generator, width: int, height: int, colour: tuple[int, int, int]) -> Shape:
    w, h = int(rng.integers(width // 5, width // 2)), int(rng.integers(height // 5, height // 2))
    x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    return Shape(SHAPES[int(rng.integers(len(SHAPES)))], (x0, y0, x0 + w, y0 + h), colour)


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", scene.size, scene.background)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape.box
        if shape.kind == "ellipse":
            draw.ellipse(shape.box, fill=shape.colour)
        elif shape.kind == "rectangle":
            draw.rectangle(shape.box, fill=shape.colour)
        elif shape.kind == "triangle":
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=shape.colour)
        else:
            thickness = max(2, (x1 - x0) // 4)
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            draw.rectangle((x0, cy - thickness, x1, cy + thickness), fill=shape.colour)
            draw.rectangle((cx - thickness, y0, cx + thickness, y1), fill=shape.colour)
    return image


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format.upper(), **options)
    return buffer.getvalue()


def variant(image: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    """A near-duplicate of ``image``: (image, format, save options)."""
    if kind == "jpeg":
        return image, "jpeg", {"quality": int(rng.integers(40, 70))}
    if kind == "resize":
        scale = float(rng.uniform(0.5, 0.8))
        size = (max(16, round(image.width * scale)), max(16, round(image.height * scale)))
        return image.resize(size, Image.BILINEAR), "jpeg", {"quality": 90}
    if kind == "crop":
        # 5% of each dimension cut away, split at random between the two sides
        cut_x, cut_y = round(image.width * 0.05), round(image.height * 0.05)
        left, top = int(rng.integers(0, cut_x + 1)), int(rng.integers(0, cut_y + 1))
        box = (left, top, image.width - (cut_x - left), image.height - (cut_y - top))
        return image.crop(box), "jpeg", {"quality": 90}
    if kind == "colour":
        shift = rng.integers(-12, 13, 3)
        pixels = np.asarray(image, dtype=np.int16) + shift
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), "jpeg", {"quality": 90}
    raise ValueError(kind)


def build_corpus(bases: int = 60, *, seed: int = 0, uniques: int = 0) -> list[Planted]:
    """``bases`` originals (JPEG q90), each with one duplicate of every kind and one look-alike; then
    ``uniques`` pictures of scenes of their own, with no duplicate (kind "unique"), as most of a real
    dataset is."""
    rng = np.random.default_rng(seed)
    corpus: list[Planted] = []
    for base in range(bases):
        scene = random_scene(rng)
        image = render(scene)
        original = encode(image, "jpeg", quality=90)
        corpus.append(Planted(f"b{base}-original", base, "original", original, "jpg", scene))
        corpus.append(Planted(f"b{base}-copy", base, "copy", original, "jpg", scene))
        corpus.append(Planted(
            f"b{base}-png_resave", base, "png_resave", encode(image, "png", compress_level=9), "png", scene
        ))
        corpus.append(Planted(
            f"b{base}-png_original", base, "png_original", encode(image, "png", compress_level=1), "png", scene
        ))
        for kind in NEAR_KINDS:
            changed, image_format, options = variant(image, kind, rng)
            corpus.append(Planted(
                f"b{base}-{kind}", base, kind, encode(changed, image_format, **options), "jpg", scene
            ))
        again, alike = redraw(scene, rng), lookalike(scene, rng)
        corpus.append(Planted(
            f"b{base}-redraw", base, "redraw", encode(render(again), "jpeg", quality=90), "jpg", again
        ))
        corpus.append(Planted(
            f"b{base}-lookalike", base, "lookalike", encode(render(alike), "jpeg", quality=90), "jpg", alike
        ))
    for unique in range(bases, bases + uniques):
        scene = random_scene(rng)
        corpus.append(Planted(f"u{unique}", unique, "unique", encode(render(scene), "jpeg", quality=90), "jpg", scene))
    return corpus


def scene_descriptor(scene: Scene, *, features: int = 32, bandwidth: float = 40.0, seed: int = 7) -> np.ndarray:
    """What the picture shows, not where: per shape kind, the sum of random Fourier features of its
    shapes' colours (so colours within ~10 levels match and colours 60+ apart do not), plus the
    background's at half weight."""
    rng = np.random.default_rng(seed)
    frequencies = rng.standard_normal((3, features)) / bandwidth
    phases = rng.uniform(0, 2 * np.pi, features)

    def colour_features(colour) -> np.ndarray:
        return np.sqrt(2.0 / features) * np.cos(np.asarray(colour, dtype=np.float64) @ frequencies + phases)

    per_kind = np.zeros((len(SHAPES), features))
    for shape in scene.shapes:
        per_kind[SHAPES.index(shape.kind)] += colour_features(shape.colour)
    return np.concatenate([per_kind.reshape(-1), 0.5 * colour_features(scene.background)]).astype(np.float32)


def scene_embeddings(items: list[Planted], dim: int = 64, *, noise: float = 0.1, seed: int = 1) -> np.ndarray:
    """Stand-in CLIP image embeddings: a fixed random projection of the scene descriptor plus
    independent per-image noise, L2-normalised (float32)."""
    rng = np.random.default_rng(seed)
    descriptors = np.stack([scene_descriptor(item.scene) for item in items])
    projection = rng.standard_normal((descriptors.shape[1], dim)).astype(np.float32)
    vectors = descriptors @ projection
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors += rng.standard_normal(vectors.shape).astype(np.float32) * (noise / np.sqrt(dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


PIXEL_MODEL_ID = "scene-descriptor"


def write_dataset(
    root,
    items: list[Planted],
    *,
    shard_size: int = 50,
    scores: list[float] | None = None,
    embeddings: np.ndarray | None = None,
    model_id: str = PIXEL_MODEL_ID,
    provenance: dict | None = None,
    failures_every: int = 0,
    captions: list[str] | None = None,
) -> list[str]:
    """Write ``items`` as an mmdata dataset (shards via ShardOutput) and, when ``scores`` is given,
    one score table per shard under ``scores/<model_id>/``. Every ``failures_every``-th input row is
    a failed download (no members, no score). Returns the keys of ``items`` in order."""
    import pyarrow as pa

    from mmdata import layout
    from mmdata.atomic import write_json, write_parquet
    from mmdata.schemas.scores import score_schema
    from mmdata.shard_output import shard_output

    rows = []
    for position, item in enumerate(items):
        rows.append(item)
        if failures_every and position % failures_every == failures_every - 1:
            rows.append(None)
    item_keys: list[str] = []
    for shard, start in enumerate(range(0, len(rows), shard_size)):
        score_rows = []
        with shard_output(root, shard) as out:
            for row, entry in enumerate(rows[start : start + shard_size]):
                key = layout.sample_key(shard, row, shard_size)
                url = f"http://example.test/{shard}/{row}.jpg"
                if entry is None:
                    out.add({"key": key, "uid": layout.sample_uid(url, None), "url": url,
                             "status": "failed_to_download", "error_message": "404"})
                    continue
                index = len(item_keys)
                caption = captions[index] if captions is not None else f"{entry.kind} scene {entry.base}"
                width, height = _size(entry.image)
                out.add(
                    {"key": key, "uid": layout.sample_uid(url, caption), "url": url, "caption": caption,
                     "status": "success", "width": width, "height": height, "image_format": entry.image_format},
                    {entry.image_format: entry.image, "txt": caption.encode()},
                )
                item_keys.append(key)
                if scores is not None:
                    score_rows.append(
                        {"key": key, "clip_score": scores[index],
                         "image_embedding": (
                             None if embeddings is None else embeddings[index].astype(np.float16).tolist()
                         ),
                         "text_embedding": (
                             None if embeddings is None else embeddings[index].astype(np.float16).tolist()
                         )}
                    )
            out.commit({"count": len(rows[start : start + shard_size])})
        if scores is not None:
            dim = None if embeddings is None else embeddings.shape[1]
            schema = score_schema(dim, provenance or {"model_id": model_id})
            table = pa.Table.from_pylist(score_rows, schema=schema) if score_rows else schema.empty_table()
            write_parquet(table, layout.scores_dir(root) / model_id / f"{layout.shard_name(shard)}.parquet", schema)
    if scores is not None:
        record = {"model_id": model_id, "keep_embeddings": embeddings is not None, **(provenance or {})}
        write_json(layout.scores_dir(root) / model_id / "model.json", record)
    return item_keys


def _size(blob: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(blob)) as image:
        return image.size


def write_photo_dataset(root, *, tied_every: int | None = None) -> None:
    """The dedup tests' photo corpus (24 scenes and their copies, originals scored highest, failures
    every 13th row); ``tied_every``: every so many rows also scores 0.9, to tie with the originals."""
    corpus = build_corpus(24, seed=5, uniques=60)
    rng = np.random.default_rng(1)
    scores = [0.9 if item.kind == "original" else float(rng.uniform(0.2, 0.6)) for item in corpus]
    if tied_every:
        for tied in range(0, len(scores), tied_every):
            scores[tied] = 0.9
    write_dataset(root, corpus, shard_size=32, scores=scores, embeddings=scene_embeddings(corpus), failures_every=13)
