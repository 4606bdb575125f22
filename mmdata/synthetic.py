"""A synthetic, CC-style web corpus with known junk, for the offline demo and end-to-end tests.

Scenes are drawn with Pillow (coloured shapes on plain, striped or dotted backgrounds, web-ish sizes
and formats) and captioned from templates. Junk is mixed in at known fractions: mismatched captions,
exact, near and semantic duplicates, broken URLs, opt-out headers and undecodable bodies. The ground
truth (``truth.parquet``) says what every row is, so curation can be scored against it. Everything
is a pure function of the seed.

Layout of a corpus folder::

    files/<name>.<ext>   the bodies a server serves (see ``mmdata.serve``)
    routes.json          per-path status codes and headers (opt-outs, 500s)
    truth.parquet        one row per URL: TRUTH_SCHEMA
"""

from __future__ import annotations

import io
import itertools
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageEnhance

from mmdata.atomic import write_json, write_parquet

KINDS = ("clean", "mismatched", "exact_dup", "near_dup", "semantic_dup", "broken", "optout", "undecodable")
DUPLICATE_KINDS = ("exact_dup", "near_dup", "semantic_dup")

DEFAULT_FRACTIONS = {
    "mismatched": 0.10,
    "exact_dup": 0.04,
    "near_dup": 0.06,
    "semantic_dup": 0.05,
    "broken": 0.03,
    "optout": 0.02,
    "undecodable": 0.02,
}

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 40, 180),
    "pink": (250, 130, 190),
    "brown": (120, 70, 30),
}
BACKGROUNDS = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "grey": (128, 128, 128),
    "light blue": (150, 200, 245),
    "dark green": (20, 80, 40),
    "beige": (225, 210, 170),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "diamond": "diamonds", "hexagon": "hexagons"}
PATTERNS = ("plain", "striped", "dotted")
COUNT_WORDS = ("one", "two", "three", "four")
TEMPLATES = (
    "{count} {colour} {shapes} on a {pattern}{background} background",
    "a picture of {count} {colour} {shapes} against a {pattern}{background} backdrop",
    "{count} {colour} {shapes} drawn on {pattern}{background}",
    "illustration: {count} {colour} {shapes}, {pattern}{background} background",
    "{count} {colour} {shapes} over a {pattern}{background} surface | free stock image",
)
NEAR_EDITS = ("reencode", "resize", "crop", "colour_shift")

TRUTH_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int32(), nullable=False),  # position in the URL table
        pa.field("site", pa.int32(), nullable=False),  # which local server ("domain") serves it
        pa.field("path", pa.string(), nullable=False),  # "/name.jpg", or a whole URL for bad schemes
        pa.field("caption", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # one of KINDS
        pa.field("description", pa.string()),  # what the image shows: "two red circles, striped grey"
        pa.field("caption_description", pa.string()),  # what the caption says (differs when mismatched)
        pa.field("dup_group", pa.int32()),  # rows of one duplicate group share it (original included)
        pa.field("duplicate_of", pa.int32()),  # the original's row, for *_dup rows
        pa.field("near_edit", pa.string()),  # reencode | resize | crop | colour_shift
        pa.field("seed_subset", pa.bool_(), nullable=False),  # clean rows set aside to train the filter
        pa.field("image_format", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ],
    metadata={"mmdata.schema": "synthetic.truth/1"},
)


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """How many rows, which junk at which fractions, and the seed everything derives from."""

    samples: int = 2500
    seed: int = 0
    sites: int = 3
    min_side: int = 200
    max_side: int = 800
    seed_fraction: float = 0.5  # of the clean rows, flagged as the filter network's training subset
    fractions: dict = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))

    def __post_init__(self) -> None:
        if self.samples < 20:
            raise ValueError(f"samples must be at least 20, got {self.samples}")
        if self.sites < 1:
            raise ValueError(f"sites must be at least 1, got {self.sites}")
        if not 16 <= self.min_side <= self.max_side:
            raise ValueError(f"need 16 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
        if not 0.0 <= self.seed_fraction <= 1.0:
            raise ValueError(f"seed_fraction must be in [0, 1], got {self.seed_fraction}")
        unknown = set(self.fractions) - set(KINDS[1:])
        if unknown:
            raise ValueError(f"unknown junk kinds {sorted(unknown)}; choose from {list(KINDS[1:])}")
        if any(f < 0 for f in self.fractions.values()) or sum(self.fractions.values()) > 0.6:
            raise ValueError("junk fractions must be >= 0 and sum to at most 0.6 (clean rows are the originals)")


@dataclass(frozen=True)
class Scene:
    count: int
    colour: str
    shape: str
    background: str
    pattern: str

    def description(self) -> str:
        return f"{COUNT_WORDS[self.count - 1]} {self.colour} {PLURALS[self.shape]}, {self.pattern} {self.background}"

    def caption(self, rng: random.Random) -> str:
        template = rng.choice(TEMPLATES)
        return template.format(
            count=COUNT_WORDS[self.count - 1],
            colour=self.colour,
            shapes=PLURALS[self.shape] if self.count > 1 else self.shape,
            pattern="" if self.pattern == "plain" else f"{self.pattern} ",
            background=self.background,
        )


def all_scenes() -> list[Scene]:
    """Every distinct scene description (4 x 8 x 6 x 6 x 3 = 3456)."""
    return [
        Scene(count, colour, shape, background, pattern)
        for count, colour, shape, background, pattern in itertools.product(
            range(1, 5), COLOURS, SHAPES, BACKGROUNDS, PATTERNS
        )
    ]


def draw_scene(scene: Scene, width: int, height: int, rng: random.Random) -> Image.Image:
    """Render ``scene``: a background with a soft light gradient, its pattern, and the shapes at
    random places and sizes with slight colour jitter (layouts vary as much as web photos do)."""
    background = _jitter(BACKGROUNDS[scene.background], rng, 8)
    image = Image.new("RGB", (width, height), background)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.add.outer(np.linspace(0, math.sin(angle), height), np.linspace(0, math.cos(angle), width))
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    shade = Image.fromarray((ramp * 56).astype(np.uint8), "L")
    tint = (255, 255, 255) if sum(background) < 384 else (0, 0, 0)
    image = Image.composite(Image.new("RGB", (width, height), tint), image, shade)
    draw = ImageDraw.Draw(image)
    accent = tuple(min(255, max(0, c + (40 if sum(background) < 300 else -40))) for c in background)
    if scene.pattern == "striped":
        step = rng.randint(12, 28)
        for x in range(-height, width, step):
            draw.line([(x, 0), (x + height, height)], fill=accent, width=max(2, step // 4))
    elif scene.pattern == "dotted":
        step = rng.randint(14, 26)
        for y in range(step // 2, height, step):
            for x in range(step // 2, width, step):
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=accent)
    for cx, cy, radius in _placements(scene.count, width, height, rng):
        _draw_shape(draw, scene.shape, cx, cy, radius, _jitter(COLOURS[scene.colour], rng, 12), rng)
    return image


def encode(image: Image.Image, image_format: str, *, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    if image_format == "jpg":
        image.save(buffer, "JPEG", quality=quality)
    elif image_format == "png":
        image.save(buffer, "PNG", compress_level=1)
    elif image_format == "webp":
        image.save(buffer, "WEBP", quality=quality)
    else:
        raise ValueError(f"unknown image format {image_format!r}")
    return buffer.getvalue()


def near_duplicate(image: Image.Image, edit: str, rng: random.Random) -> Image.Image:
    """The same picture after an edit a web copy typically went through (the bytes change, the look does not)."""
    width, height = image.size
    if edit == "resize":
        scale = rng.uniform(0.55, 0.85)
        return image.resize((max(16, int(width * scale)), max(16, int(height * scale))), Image.BILINEAR)
    if edit == "crop":
        dx, dy = int(width * rng.uniform(0.01, 0.04)), int(height * rng.uniform(0.01, 0.04))
        return image.crop((dx, dy, width - dx, height - dy))
    if edit == "colour_shift":
        return ImageEnhance.Brightness(image).enhance(rng.choice((0.92, 0.95, 1.05, 1.08)))
    return image  # reencode: same pixels, another quality


def generate_corpus(output: str | os.PathLike, config: SyntheticConfig | None = None) -> Path:
    """Write the corpus under ``output`` (files, routes, truth) and return the truth table's path.

    A folder that already holds ``truth.parquet`` is left as it is: the corpus is a pure function of
    the config, so regenerating would write the same bytes.
    """
    config = config or SyntheticConfig()
    output = Path(output)
    truth_path = output / "truth.parquet"
    if truth_path.exists():
        return truth_path
    rng = random.Random(config.seed)
    files = output / "files"
    files.mkdir(parents=True, exist_ok=True)

    counts = {kind: int(round(config.samples * config.fractions.get(kind, 0.0))) for kind in KINDS[1:]}
    originals = config.samples - sum(counts.values()) + counts["mismatched"]
    counts["clean"] = originals - counts["mismatched"]
    scenes = all_scenes()
    if originals + counts["semantic_dup"] > len(scenes):
        raise ValueError(f"at most {len(scenes)} distinct scenes: lower samples ({config.samples})")
    rng.shuffle(scenes)
    unique_scenes, spare_scenes = scenes[:originals], scenes[originals:]

    rows: list[dict] = []
    images: dict[int, tuple[Image.Image, bytes]] = {}

    def add(kind: str, **fields) -> dict:
        row = {"kind": kind, "dup_group": None, "duplicate_of": None, "near_edit": None,
               "description": None, "caption_description": None, "image_format": None,
               "width": None, "height": None, "seed_subset": False, **fields}
        row["index"] = len(rows)
        rows.append(row)
        return row

    def add_image(row: dict, image: Image.Image, image_format: str, body: bytes | None = None) -> None:
        body = body if body is not None else encode(image, image_format, quality=rng.randint(80, 95))
        row.update(image_format=image_format, width=image.size[0], height=image.size[1])
        row["name"] = f"{row['index']:06d}.{image_format}"
        (files / row["name"]).write_bytes(body)
        images[row["index"]] = (image, body)

    # Originals: clean and mismatched rows, each a distinct scene.
    for position, scene in enumerate(unique_scenes):
        kind = "clean" if position < counts["clean"] else "mismatched"
        caption_scene = scene if kind == "clean" else _unrelated_scene(scene, spare_scenes + unique_scenes, rng)
        row = add(kind, description=scene.description(), caption=caption_scene.caption(rng),
                  caption_description=caption_scene.description(), scene=scene)
        add_image(row, draw_scene(scene, *_web_size(config, rng), rng), _web_format(rng))

    clean_rows = [row for row in rows if row["kind"] == "clean"]
    dup_sources = rng.sample(clean_rows, counts["exact_dup"] + counts["near_dup"] + counts["semantic_dup"])
    sources = iter(dup_sources)
    for kind in DUPLICATE_KINDS:
        for _ in range(counts[kind]):
            source = next(sources)
            source["dup_group"] = source["index"]
            scene: Scene = source["scene"]
            row = add(kind, description=scene.description(), caption=scene.caption(rng),
                      caption_description=scene.description(), dup_group=source["index"],
                      duplicate_of=source["index"], scene=scene)
            image, body = images[source["index"]]
            if kind == "exact_dup":
                add_image(row, image, source["image_format"], body)
            elif kind == "near_dup":
                edit = NEAR_EDITS[len(rows) % len(NEAR_EDITS)]
                row["near_edit"] = edit
                image_format = "jpg" if edit == "reencode" else _web_format(rng)
                edited = near_duplicate(image, edit, rng)
                quality = rng.randint(55, 75) if edit == "reencode" else rng.randint(80, 95)
                add_image(row, edited, image_format, encode(edited, image_format, quality=quality))
            else:
                add_image(row, draw_scene(scene, *_web_size(config, rng), rng), _web_format(rng))

    routes: dict[str, dict] = {}
    for position in range(counts["optout"]):
        scene = spare_scenes[counts["semantic_dup"] + position]  # unused by any other row
        row = add("optout", description=scene.description(), caption=scene.caption(rng),
                  caption_description=scene.description())
        add_image(row, draw_scene(scene, *_web_size(config, rng), rng), _web_format(rng))
        directive = rng.choice(("noai", "noimageai", "noai, noimageai", "noindex, noimageindex"))
        routes["/" + row["name"]] = {"headers": {"X-Robots-Tag": directive}}
    for position in range(counts["undecodable"]):
        scene = rng.choice(unique_scenes)
        row = add("undecodable", caption=scene.caption(rng), caption_description=scene.description())
        row["name"] = f"{row['index']:06d}.jpg"
        (files / row["name"]).write_bytes(_undecodable_body(position, rng))
    for position in range(counts["broken"]):
        scene = rng.choice(unique_scenes)
        row = add("broken", caption=scene.caption(rng), caption_description=scene.description())
        flavour = position % 4
        if flavour == 0:
            row["path"] = f"ftp://127.0.0.1/{row['index']:06d}.jpg"
        elif flavour == 1:
            row["path"] = f"htp:/{row['index']:06d}.jpg"
        else:
            row["name"] = f"{row['index']:06d}.jpg"  # never written: 404, or a 500 from routes
            if flavour == 3:
                routes["/" + row["name"]] = {"status": 500}

    seed_candidates = [row for row in clean_rows if row["dup_group"] is None]
    for row in rng.sample(seed_candidates, int(len(seed_candidates) * config.seed_fraction)):
        row["seed_subset"] = True

    order = list(range(len(rows)))
    rng.shuffle(order)
    row_of = {index: position for position, index in enumerate(order)}
    table_rows = []
    for index in order:
        row = rows[index]
        table_rows.append({
            "row": row_of[index],
            "site": rng.randrange(config.sites),
            "path": row.get("path") or "/" + row["name"],
            "caption": row["caption"],
            "kind": row["kind"],
            "description": row["description"],
            "caption_description": row["caption_description"],
            "dup_group": None if row["dup_group"] is None else row_of[row["dup_group"]],
            "duplicate_of": None if row["duplicate_of"] is None else row_of[row["duplicate_of"]],
            "near_edit": row["near_edit"],
            "seed_subset": row["seed_subset"],
            "image_format": row["image_format"],
            "width": row["width"],
            "height": row["height"],
        })
    write_json(output / "routes.json", routes)
    write_parquet(pa.Table.from_pylist(table_rows), truth_path, TRUTH_SCHEMA)
    return truth_path


def url_table(truth: pa.Table, base_urls: list[str]) -> pa.Table:
    """The download input: ``url`` and ``caption`` in row order, each path under its site's base URL."""
    urls = [
        path if not path.startswith("/") else base_urls[site % len(base_urls)].rstrip("/") + path
        for site, path in zip(truth.column("site").to_pylist(), truth.column("path").to_pylist())
    ]
    return pa.table({"url": urls, "caption": truth.column("caption")})


def _unrelated_scene(scene: Scene, pool: list[Scene], rng: random.Random) -> Scene:
    """A caption source that shares neither colour nor shape with ``scene``: a real mismatch."""
    while True:
        other = rng.choice(pool)
        if other.colour != scene.colour and other.shape != scene.shape:
            return other


def _web_size(config: SyntheticConfig, rng: random.Random) -> tuple[int, int]:
    long_side = rng.randint(max(config.min_side, int(config.max_side * 0.4)), config.max_side)
    aspect = rng.choice((1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3)) if rng.random() < 0.5 else rng.uniform(0.6, 1.9)
    if aspect >= 1:
        width, height = long_side, int(long_side / aspect)
    else:
        width, height = int(long_side * aspect), long_side
    return max(width, config.min_side), max(height, config.min_side)


def _web_format(rng: random.Random) -> str:
    draw = rng.random()
    return "jpg" if draw < 0.75 else "png" if draw < 0.87 else "webp"


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in colour)


def _placements(count: int, width: int, height: int, rng: random.Random) -> list[tuple[float, float, float]]:
    """Centres and radii for ``count`` shapes anywhere in the frame, rarely overlapping."""
    side = min(width, height)
    placed: list[tuple[float, float, float]] = []
    for _ in range(count):
        radius = side * rng.uniform(0.09, 0.2) * (1.0 if count < 3 else 0.8)
        for _attempt in range(30):
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
            if all(math.hypot(cx - x, cy - y) > (radius + r) * 0.95 for x, y, r in placed):
                break
        placed.append((cx, cy, radius))
    return placed


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float,
                colour: tuple[int, int, int], rng: random.Random) -> None:
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.regular_polygon((cx, cy, radius * 1.2), 4, rotation=rng.uniform(-8, 8), fill=colour)
    elif shape == "diamond":
        draw.regular_polygon((cx, cy, radius * 1.2), 4, rotation=45 + rng.uniform(-8, 8), fill=colour)
    elif shape == "triangle":
        draw.regular_polygon((cx, cy, radius * 1.1), 3, rotation=rng.uniform(-10, 10), fill=colour)
    elif shape == "hexagon":
        draw.regular_polygon((cx, cy, radius), 6, rotation=rng.uniform(0, 30), fill=colour)
    elif shape == "star":
        turn = rng.uniform(0, math.pi)
        points = [
            (cx + (radius if i % 2 == 0 else radius * 0.45) * math.cos(turn + i * math.pi / 5),
             cy + (radius if i % 2 == 0 else radius * 0.45) * math.sin(turn + i * math.pi / 5))
            for i in range(10)
        ]
        draw.polygon(points, fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _undecodable_body(position: int, rng: random.Random) -> bytes:
    """Bodies served as image/jpeg that are not images: an HTML page, noise, a truncated JPEG."""
    flavour = position % 3
    if flavour == 0:
        return b"<!doctype html><html><head><title>Not found</title></head><body>moved</body></html>"
    if flavour == 1:
        return bytes(rng.getrandbits(8) for _ in range(2048))
    image = draw_scene(Scene(2, "red", "circle", "white", "plain"), 400, 300, rng)
    body = encode(image, "jpg")
    return body[: len(body) // 3]


def truth_summary(truth: pa.Table) -> dict[str, int]:
    """Rows per kind, for logs and tests."""
    kinds = truth.column("kind").to_pylist()
    return {kind: kinds.count(kind) for kind in KINDS}
