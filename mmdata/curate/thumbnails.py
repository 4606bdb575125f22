"""Content thumbnails that verify near-duplicate candidates found by the perceptual hash.

A 64-bit grey pHash is dominated by whatever covers most of the picture: on web-style images that
is a flat background and, in ``border`` mode, the white padding. Plainly different pictures of the
same layout then fall within a few bits (on the synthetic demo corpus, 2 false candidate pairs for
every 3 true ones at 8 bits). Each candidate pair is therefore checked on what the hash cannot see:

* the picture's *content*: the box left after trimming white padding (any near-white margin), so
  pictures padded to other aspect ratios are compared picture to picture;
* ``thumbnails``: 16×16 RGB of the content, at zoom 1 and of its central 94% (a 1–5% crop
  lines up with one of the two). Two thumbnails differ by the largest colour difference of any
  cell from the best match among the other's 3×3 neighbouring cells (a shift of one cell, 6%, is
  free). A different object, shape or colour leaves cells 60+ levels apart; re-encodes, resizes,
  crops and ±8% brightness stay under ~45;
* ``texture``: mean absolute difference of neighbouring pixels of the grey content at 128×128
  (stripes and dots versus a plain background), compared as a log ratio;
* ``aspect``: the log aspect ratio of the content (a 5% crop moves it ≤ 0.06).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops

THUMB_SIDE = 16
ZOOMS = (1.0, 0.94)
THUMB_BYTES = len(ZOOMS) * THUMB_SIDE * THUMB_SIDE * 3
TEXTURE_SIDE = 128
WHITE_LEVEL = 246  # a margin row/column is padding when every pixel's darkest channel is at least this
TEXTURE_TOLERANCE = 0.5  # largest |log ratio| of the textures of near duplicates (resizes blur by ≤ 0.35)
ASPECT_TOLERANCE = 0.1  # largest |log ratio| of the content aspect ratios (a 5% crop: ≤ 0.06)
_CONTENT_LUT = [255 if level < WHITE_LEVEL else 0 for level in range(256)]
_CHUNK = 8192  # candidate pairs compared per numpy pass (bounded memory)


def content_box(rgb: Image.Image) -> tuple[int, int, int, int]:
    """The bounding box of the pixels that are not near-white padding (the whole image if all are)."""
    red, green, blue = rgb.split()
    darkest = ImageChops.darker(ImageChops.darker(red, green), blue)
    box = darkest.point(_CONTENT_LUT).getbbox()  # all in C: numpy's min over RGB costs 10× more
    return box if box is not None else (0, 0, rgb.width, rgb.height)


def content_features(rgb: Image.Image) -> tuple[bytes, float, float]:
    """(thumbnails as ``THUMB_BYTES`` bytes, texture, log aspect ratio) of an RGB image's content."""
    left, top, right, bottom = content_box(rgb)
    width, height = right - left, bottom - top
    thumbnails = []
    for zoom in ZOOMS:
        margin_x, margin_y = (1 - zoom) / 2 * width, (1 - zoom) / 2 * height
        box = (left + margin_x, top + margin_y, right - margin_x, bottom - margin_y)
        thumbnails.append(np.asarray(rgb.resize((THUMB_SIDE, THUMB_SIDE), Image.BOX, box=box), dtype=np.uint8))
    grey = np.asarray(rgb.convert("L").resize((TEXTURE_SIDE, TEXTURE_SIDE), Image.BILINEAR, box=(left, top, right, bottom)), dtype=np.float32)
    texture = float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())
    return np.stack(thumbnails).tobytes(), texture, float(np.log(width / height))


def thumbnails_agree(left: np.ndarray, right: np.ndarray, tolerance: float) -> np.ndarray:
    """Mask of the aligned pairs of ``[m, len(ZOOMS), S, S, 3]`` uint8 thumbnails that agree under
    some alignment (one side at zoom 1 against the other at each zoom): the symmetric shift-tolerant
    largest cell difference is within ``tolerance``. Pairs stop at the first alignment that agrees."""
    agree = np.zeros(len(left), dtype=bool)
    alignments = [(side, zoom) for zoom in range(len(ZOOMS)) for side in (0, 1)]
    for start in range(0, len(left), _CHUNK):
        a = left[start : start + _CHUNK].astype(np.float32)
        b = right[start : start + _CHUNK].astype(np.float32)
        pending = np.arange(len(a))
        for side, zoom in alignments:
            x, y = (a[pending, 0], b[pending, zoom]) if side == 0 else (b[pending, 0], a[pending, zoom])
            distance = np.maximum(_tolerant(x, y), _tolerant(y, x)).max(axis=(1, 2))
            agree[start + pending[distance <= tolerance]] = True
            pending = pending[distance > tolerance]
            if not len(pending):
                break
    return agree


def _tolerant(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each cell of ``a`` ([m, S, S, 3]), its largest channel difference from the closest of
    ``b``'s cells within one cell of it."""
    side = a.shape[1]
    padded = np.pad(b, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    best = np.full(a.shape[:3], np.inf, dtype=np.float32)
    for dy in range(3):
        for dx in range(3):
            np.minimum(best, np.abs(a - padded[:, dy : dy + side, dx : dx + side]).max(axis=3), out=best)
    return best


def verified(
    left_thumbnails: np.ndarray, right_thumbnails: np.ndarray,
    left_texture: np.ndarray, right_texture: np.ndarray,
    left_aspect: np.ndarray, right_aspect: np.ndarray,
    tolerance: float,
) -> np.ndarray:
    """Mask of the aligned pairs whose content agrees: aspect, texture, then thumbnails within ``tolerance``."""
    keep = np.abs(left_aspect - right_aspect) <= ASPECT_TOLERANCE
    keep &= np.abs(np.log1p(left_texture) - np.log1p(right_texture)) <= TEXTURE_TOLERANCE
    rows = np.flatnonzero(keep)
    keep[rows] = thumbnails_agree(left_thumbnails[rows], right_thumbnails[rows], tolerance)
    return keep
