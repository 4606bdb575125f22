"""Content thumbnails that verify near-duplicate candidates found by the perceptual hash.

A 64-bit grey pHash is dominated by whatever covers most of the picture: on web-style images that
is a flat background and, in ``border`` mode, the white padding. Plainly different pictures of the
same layout then fall within a few bits (on the 2,500-row synthetic demo corpus, 385 false
candidate pairs against 248 true ones at 8 bits). Each candidate pair is therefore checked on what the hash cannot see:

* the picture's *content*: the box left after trimming white padding (any near-white margin), so
  pictures padded to other aspect ratios are compared picture to picture;
* ``thumbnails``: the content in RGB at 16×16 and at 17×17. Each cell of one thumbnail is scored
  by how far its colour lies outside the range of the other's 3×3 cells around it (a shift of one
  cell, 6%, is free, and so is a cell that straddles an edge, since it mixes the colours on either
  side); the largest score, taken both ways, is the distance. Same-size pictures compare 16 to 16.
  A crop that keeps ~95% of each side has cells of the original's 17×17 size, so its 16×16 is also
  compared with the four 16×16 windows of the original's 17×17 (and the other way round), which
  lines up any 0–5% crop. The smallest distance must be within the tolerance (default 64 levels):
  5% crops of the test corpus's sharp shapes reach 62, while pictures with an object of another
  colour, shape or place differ by more;
* ``texture``: mean absolute difference of neighbouring pixels of the grey content at 128×128
  (stripes and dots versus a plain background), compared as a log ratio;
* ``aspect``: the log aspect ratio of the content (a 5% crop moves it ≤ 0.06).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops

THUMB_SIDE = 16  # and THUMB_SIDE + 1, whose 16-cell windows are 95% crops
_SMALL = THUMB_SIDE * THUMB_SIDE * 3
THUMB_BYTES = _SMALL + (THUMB_SIDE + 1) ** 2 * 3
TEXTURE_SIDE = 128
WHITE_LEVEL = 246  # a pixel is padding when its darkest channel is at least this
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
    """(thumbnails as ``THUMB_BYTES`` bytes: 16×16 then 17×17 RGB, texture, log aspect ratio) of an
    RGB image's content."""
    box = content_box(rgb)
    width, height = box[2] - box[0], box[3] - box[1]
    thumbnails = b"".join(
        rgb.resize((side, side), Image.BOX, box=box).tobytes() for side in (THUMB_SIDE, THUMB_SIDE + 1)
    )
    grey = np.asarray(rgb.convert("L").resize((TEXTURE_SIDE, TEXTURE_SIDE), Image.BILINEAR, box=box), dtype=np.float32)
    texture = float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())
    return thumbnails, texture, float(np.log(width / height))


def thumbnails_agree(left: np.ndarray, right: np.ndarray, tolerance: float) -> np.ndarray:
    """Mask of the aligned pairs of ``[m, THUMB_BYTES]`` uint8 thumbnails that agree under some
    alignment (same size, or either one a ~95% crop of the other): the symmetric shift-tolerant
    largest cell difference is within ``tolerance``. Pairs stop at the first alignment that agrees."""
    side = THUMB_SIDE
    windows = [(y, x) for y in (0, 1) for x in (0, 1)]
    alignments = [(None, None)] + [(crop, window) for crop in (0, 1) for window in windows]
    agree = np.zeros(len(left), dtype=bool)
    for start in range(0, len(left), _CHUNK):
        pairs = []
        for thumbnails in (left[start : start + _CHUNK], right[start : start + _CHUNK]):
            small = thumbnails[:, :_SMALL].reshape(-1, side, side, 3).astype(np.float32)
            large = thumbnails[:, _SMALL:].reshape(-1, side + 1, side + 1, 3).astype(np.float32)
            pairs.append((small, large))
        pending = np.arange(len(pairs[0][0]))
        for crop, window in alignments:
            if crop is None:  # same framing
                x, y = pairs[0][0][pending], pairs[1][0][pending]
            else:  # side ``crop`` is the cropped one: its 16×16 against a window of the other's 17×17
                (y0, x0), whole = window, pairs[1 - crop][1]
                x, y = pairs[crop][0][pending], whole[pending, y0 : y0 + side, x0 : x0 + side]
            distance = np.maximum(_tolerant(x, y), _tolerant(y, x)).max(axis=(1, 2))
            agree[start + pending[distance <= tolerance]] = True
            pending = pending[distance > tolerance]
            if not len(pending):
                break
    return agree


def _tolerant(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each cell of ``a`` ([m, S, S, 3]), how far (largest channel) its colour lies outside the
    range of ``b``'s cells within one cell of it. A cell that straddles an edge mixes the colours on
    both sides, which both lie in that range, so sub-cell misalignment costs nothing."""
    side = a.shape[1]
    padded = np.pad(b, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    windows = [padded[:, dy : dy + side, dx : dx + side] for dy in range(3) for dx in range(3)]
    low, high = np.minimum.reduce(windows), np.maximum.reduce(windows)
    return np.maximum(low - a, a - high).clip(min=0).max(axis=3)


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
