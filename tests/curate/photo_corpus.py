"""A planted near-duplicate corpus of photo-like pictures, with look-alike uniques, and how to score it.

Each *layout* is a composition: a landscape (sky gradient over textured ground at a horizon), a studio
shot (a light backdrop with a vignette and one product in the middle) or an interior (wall, floor, a
frame on the wall), with one to three objects at set places and sizes. Each layout is drawn twice with
other *content*: other object colours and shapes, and fresh fractal-noise textures. The two pictures
share their composition and background colours, so a 64-bit grey pHash often cannot tell them apart,
but they are different pictures: the *look-alike* is a unique, never a duplicate.

The first picture of each layout gets the planted copies (``COPY_KINDS``): a horizontal mirror, a
JPEG re-encode at quality 55, a 0.6× downscale, a 3% crop (3% of each side's length cut, split at
random between the two sides) and a uniform brightness shift of +12 or -12 levels. Mirrors count as
duplicates: a flipped copy shows the same picture (and flipping is a standard training augmentation).

``python tests/curate/photo_corpus.py`` prints recall and precision of the near tier and of the plain
reference (sha256 + a 64-bit pHash within 8 bits) on it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

COPY_KINDS = ("mirror", "reencode", "resize", "crop", "brightness")
LAYOUTS = ("landscape", "studio", "interior")
OBJECT_SHAPES = ("ellipse", "rectangle", "triangle", "blob")


@dataclass(frozen=True)
class Photo:
    """One picture of the corpus: ``layout`` names its composition; ``kind`` is "original",
    "lookalike" (another picture of the same layout: a unique) or a COPY_KIND of the original."""

    name: str
    layout: int
    kind: str
    image: bytes

    @property
    def group(self) -> str:
        """Pictures of one group are duplicates of each other; every look-alike is its own group."""
        return f"{self.layout}-lookalike" if self.kind == "lookalike" else str(self.layout)


@dataclass(frozen=True)
class Composition:
    style: str
    size: tuple[int, int]
    horizon: float  # landscape: horizon height; interior: where the wall meets the floor (fractions of the height)
    backdrop: tuple[tuple[int, int, int], tuple[int, int, int]]  # sky/backdrop/wall, ground/floor
    boxes: tuple[tuple[float, float, float, float], ...]  # object boxes as fractions of the frame


def fractal_noise(rng: np.random.Generator, width: int, height: int, *, octaves: int = 6, roughness: float = 0.6):
    """[height, width] float32 noise with a 1/f-like spectrum, unit standard deviation: random grids of
    2, 4, 8, ... cells upsampled bicubically and summed with weights ``roughness ** octave``."""
    field = np.zeros((height, width), dtype=np.float32)
    for octave in range(octaves):
        cells = 2 ** (octave + 1)
        grid = rng.standard_normal((cells, cells)).astype(np.float32)
        layer = Image.fromarray(grid, mode="F").resize((width, height), Image.BICUBIC)
        field += np.asarray(layer) * roughness**octave
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def random_composition(rng: np.random.Generator) -> Composition:
    style = LAYOUTS[int(rng.integers(len(LAYOUTS)))]
    width, height = int(rng.integers(128, 192)), int(rng.integers(112, 176))
    if style == "studio":  # half of them on pure white, as web shops show products
        grey = 255 if rng.random() < 0.5 else int(rng.integers(215, 250))
        backdrop = ((grey, grey, grey - int(rng.integers(0, 12)) * (grey < 255)), (grey, grey, grey))
        side = float(rng.uniform(0.3, 0.55))
        boxes = ((0.5 - side / 2, 0.45 - side / 2, 0.5 + side / 2, 0.45 + side / 2),)
    else:
        backdrop = (_colour(rng), _colour(rng))
        boxes = tuple(_random_box(rng) for _ in range(int(rng.integers(1, 4))))
    return Composition(style, (width, height), float(rng.uniform(0.35, 0.65)), backdrop, boxes)


def draw(composition: Composition, rng: np.random.Generator) -> Image.Image:
    """One picture of ``composition``: its backdrop, then objects of random colours, shapes and textures."""
    width, height = composition.size
    top, bottom = (np.asarray(colour, dtype=np.float32) for colour in composition.backdrop)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    split = int(composition.horizon * height)
    if composition.style == "studio":
        columns = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :, None]
        vignette = 1.0 - (0.12 if top.max() < 255 else 0.0) * (columns**2 + (2 * rows - 1) ** 2)
        pixels = np.broadcast_to(top * vignette, (height, width, 3)).copy()
        texture = 3.0 if top.max() < 255 else 0.0
    else:
        pixels = np.empty((height, width, 3), dtype=np.float32)
        sky = top * (0.8 + 0.3 * rows[:split] / max(composition.horizon, 1e-3))
        pixels[:split] = np.broadcast_to(sky, (split, width, 3))
        pixels[split:] = bottom
        texture = float(rng.uniform(10.0, 22.0))
    noise = fractal_noise(rng, width, height)
    pixels += noise[..., None] * texture * np.array([1.0, 0.95, 0.9], dtype=np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if composition.style == "interior":
        frame = (int(width * 0.6), int(height * 0.08), int(width * 0.9), int(height * composition.horizon * 0.8))
        ImageDraw.Draw(image).rectangle(frame, outline=(40, 30, 20), width=3, fill=_colour(rng))
    for box in composition.boxes:
        _paste_object(image, box, rng)
    return image.filter(ImageFilter.GaussianBlur(0.6))


def planted_copy(image: Image.Image, kind: str, rng: np.random.Generator) -> bytes:
    """The encoded copy of ``image`` (an original) of one COPY_KIND."""
    if kind == "mirror":
        return _jpeg(ImageOps.mirror(image), 90)
    if kind == "reencode":
        return _jpeg(image, 55)
    if kind == "resize":
        return _jpeg(image.resize((round(image.width * 0.6), round(image.height * 0.6)), Image.BILINEAR), 90)
    if kind == "crop":
        cut_x, cut_y = round(image.width * 0.03), round(image.height * 0.03)
        left, top = int(rng.integers(0, cut_x + 1)), int(rng.integers(0, cut_y + 1))
        return _jpeg(image.crop((left, top, image.width - cut_x + left, image.height - cut_y + top)), 90)
    if kind == "brightness":
        shift = 12 if rng.random() < 0.5 else -12
        return _jpeg(Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + shift, 0, 255).astype(np.uint8)), 90)
    raise ValueError(f"unknown copy kind {kind!r}; choose from {COPY_KINDS}")


def build_photo_corpus(layouts: int = 80, *, seed: int = 0) -> list[Photo]:
    """``layouts`` originals (JPEG q90), each with every COPY_KIND and one look-alike."""
    rng = np.random.default_rng(seed)
    corpus = []
    for layout in range(layouts):
        composition = random_composition(rng)
        original = draw(composition, rng)
        corpus.append(Photo(f"l{layout}-original", layout, "original", _jpeg(original, 90)))
        corpus.append(Photo(f"l{layout}-lookalike", layout, "lookalike", _jpeg(draw(composition, rng), 90)))
        for kind in COPY_KINDS:
            corpus.append(Photo(f"l{layout}-{kind}", layout, kind, planted_copy(original, kind, rng)))
    return corpus


def quality(labels: np.ndarray, corpus: list[Photo]) -> dict:
    """Recall per copy kind (the copy ends in its original's group) and precision over the pictures
    merged into another's group: a merged picture is correct when the group's first member (its
    representative) is of its own duplicate group."""
    groups = np.array([photo.group for photo in corpus])
    first_of_label: dict[int, int] = {}
    for row, label in enumerate(labels):
        first_of_label.setdefault(int(label), row)
    merged = [row for row in range(len(corpus)) if first_of_label[int(labels[row])] != row]
    correct = sum(groups[row] == groups[first_of_label[int(labels[row])]] for row in merged)
    original_of = {photo.layout: row for row, photo in enumerate(corpus) if photo.kind == "original"}
    recall = {}
    for kind in COPY_KINDS:
        rows = [row for row, photo in enumerate(corpus) if photo.kind == kind]
        recall[kind] = sum(labels[row] == labels[original_of[corpus[row].layout]] for row in rows) / len(rows)
    copies = [row for row, photo in enumerate(corpus) if photo.kind in COPY_KINDS]
    found = sum(labels[row] == labels[original_of[corpus[row].layout]] for row in copies)
    return {
        "recall": found / len(copies),
        "precision": correct / len(merged) if merged else 1.0,
        "merged": len(merged),
        "wrong": len(merged) - int(correct),
        "recall_by_kind": recall,
    }


def corpus_hashes(corpus: list[Photo]):
    """The near tier's hash table (HASH_SCHEMA) of the corpus, keyed by picture name."""
    from mmdata.curate.hashes import hash_rows

    return hash_rows([(photo.name, photo.image) for photo in corpus])


def reference_labels(corpus: list[Photo], hashes, radius: int = 8) -> np.ndarray:
    """The plain reference: sha256 equality or a 64-bit pHash (of the whole picture) within ``radius``."""
    from mmdata.curate.components import connected_components
    from mmdata.curate.dedup import _equal_value_edges
    from mmdata.curate.hashes import hamming

    phashes = hashes.column("phash").to_numpy(zero_copy_only=False).astype(np.uint64)
    left, right = np.nonzero(np.triu(hamming(phashes[:, None], phashes[None, :]) <= radius, 1))
    same_left, same_right = _equal_value_edges(hashes.column("sha256").to_pylist())
    return connected_components(len(corpus), np.concatenate([left, same_left]), np.concatenate([right, same_right]))


def near_tier_labels(corpus: list[Photo], hashes, **config) -> np.ndarray:
    """Groups of the exact and near tiers (``find_duplicates``) over the corpus, at ``config``."""
    from mmdata.curate.components import connected_components
    from mmdata.curate.dedup import DedupConfig, DedupInputs, find_duplicates
    from mmdata.curate.hashes import NearHashes

    near_rows, near = NearHashes.from_table(hashes)
    inputs = DedupInputs(
        keys=[photo.name for photo in corpus], scores=np.zeros(len(corpus)),
        sha256=hashes.column("sha256").to_pylist(), pixel_hash=hashes.column("pixel_hash").to_pylist(),
        near=near, near_rows=near_rows,
    )
    kept = find_duplicates(inputs, DedupConfig(exact=True, near=True, **config)).table.column("duplicate_of")
    row_of = {photo.name: row for row, photo in enumerate(corpus)}
    dropped = [(row, row_of[twin]) for row, twin in enumerate(kept.to_pylist()) if twin is not None]
    left, right = (np.array([pair[side] for pair in dropped], dtype=np.int64) for side in (0, 1))
    return connected_components(len(corpus), left, right)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(20, 236, 3))


def _random_box(rng: np.random.Generator) -> tuple[float, float, float, float]:
    w, h = float(rng.uniform(0.18, 0.4)), float(rng.uniform(0.18, 0.4))
    x0, y0 = float(rng.uniform(0.02, 0.98 - w)), float(rng.uniform(0.3, 0.98 - h))
    return (x0, y0, x0 + w, y0 + h)


def _paste_object(image: Image.Image, box: tuple[float, float, float, float], rng: np.random.Generator) -> None:
    """A textured object of a random colour and shape filling ``box`` (fractions of the frame)."""
    x0, y0, x1, y1 = (round(v * s) for v, s in zip(box, (image.width, image.height) * 2))
    width, height = max(2, x1 - x0), max(2, y1 - y0)
    colour = np.asarray(_colour(rng), dtype=np.float32)
    shading = np.linspace(1.1, 0.8, height, dtype=np.float32)[:, None, None]
    texture = fractal_noise(rng, width, height, octaves=5)[..., None] * float(rng.uniform(6.0, 18.0))
    body = Image.fromarray(np.clip(colour * shading + texture, 0, 255).astype(np.uint8))
    mask = Image.new("L", (width, height), 0)
    outline = ImageDraw.Draw(mask)
    shape = OBJECT_SHAPES[int(rng.integers(len(OBJECT_SHAPES)))]
    if shape == "ellipse":
        outline.ellipse((0, 0, width - 1, height - 1), fill=255)
    elif shape == "rectangle":
        outline.rectangle((0, 0, width - 1, height - 1), fill=255)
    elif shape == "triangle":
        outline.polygon([(0, height - 1), (width // 2, 0), (width - 1, height - 1)], fill=255)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radii = rng.uniform(0.75, 1.0, 9)
        outline.polygon(
            [(width / 2 * (1 + r * np.cos(a)), height / 2 * (1 + r * np.sin(a))) for a, r in zip(angles, radii)],
            fill=255,
        )
    image.paste(body, (x0, y0), mask)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


if __name__ == "__main__":
    photos = build_photo_corpus()
    table = corpus_hashes(photos)
    for name, labels in (("near tier", near_tier_labels(photos, table)),
                         ("sha256 + pHash <= 8", reference_labels(photos, table))):
        figures = quality(labels, photos)
        by_kind = ", ".join(f"{kind} {value:.3f}" for kind, value in figures["recall_by_kind"].items())
        print(f"{name:<22} recall {figures['recall']:.3f} precision {figures['precision']:.3f} "
              f"({figures['wrong']} of {figures['merged']} merged wrongly); recall by kind: {by_kind}")
