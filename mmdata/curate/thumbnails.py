"""Content thumbnails that verify near-duplicate candidates found by the perceptual hash.

A 64-bit grey pHash is dominated by whatever covers most of the picture: on web-style images that
is a flat background and, in ``border`` mode, the white padding. Plainly different pictures of the
same layout then fall within a few bits (on the 2,500-row synthetic demo corpus, 385 false
candidate pairs against 248 true ones at 8 bits). Each candidate pair is therefore checked on what
the hash cannot see:

* the picture's *content*: the box left after trimming bright uniform bars (padding, a plain white
  backdrop; :func:`content_box`), keeping a margin of them, so pictures padded to other aspect
  ratios are compared picture to picture;
* ``thumbnails``: the content in RGB at 16×16 and at 17×17. One thumbnail is first moved by the
  uniform brightness shift (at most ``BRIGHTNESS_SHIFT`` levels) that best matches the other, so a
  brighter or darker copy costs nothing. Each cell is then scored by how far its colour lies outside
  the range its counterpart's cells span towards their neighbours (``REACH`` of a cell: sub-cell
  misalignment and cells straddling an edge cost little), both ways; the distance is the largest
  score but ``IGNORED_CELLS`` (one or two cells at a cut edge). Same framing compares 16 to 16; a
  crop's 16×16 is compared with windows of the other's 17×17 resampled to 16×16, for crops of 3-9%
  of each side cut anywhere between its two ends, choosing per axis the ``CANDIDATE_WINDOWS``
  windows whose colour profile matches best. The smallest distance must be within the tolerance
  (default 28 levels): on the photo-like test corpus, copies lie at 0-25 (a few crops up to 39),
  look-alikes of the same layout with other objects at 26 and above; most at 40+;
* ``texture``: mean absolute difference of neighbouring pixels of the grey content at 128×128
  (stripes and dots versus a plain background), compared as a log ratio;
* ``aspect``: the log aspect ratio of the content (an 8% crop of one side moves it ≤ 0.09).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

THUMB_SIDE = 16  # and THUMB_SIDE + 1, whose windows are the crops
_SMALL = THUMB_SIDE * THUMB_SIDE * 3
THUMB_BYTES = _SMALL + (THUMB_SIDE + 1) ** 2 * 3
TEXTURE_SIDE = 128
BAR_TOLERANCE = 12  # levels: how far a bar line's pixels may lie from its edge's colour (JPEG noise)
BAR_FRACTION = 0.97  # of a line's pixels within the tolerance: a few noisy ones do not end the bar
BAR_BRIGHT = 200  # a bar's brightness is at least this (0-255): white padding, a white backdrop
BAR_SIDE = 96  # bars are found on a copy at most this many pixels on a side
BAR_MARGIN = 0.08  # of the content's size: how much of a trimmed bar is kept on each side
TEXTURE_TOLERANCE = 0.5  # largest |log ratio| of the textures of near duplicates (resizes blur by ≤ 0.35)
ASPECT_TOLERANCE = 0.1  # largest |log ratio| of the content aspect ratios
THUMBNAIL_TOLERANCE = 28.0  # largest thumbnail distance (0-255 levels) of a verified near pair
BRIGHTNESS_SHIFT = 16.0  # largest uniform brightness shift (levels) taken out before comparing
REACH = 0.75  # of the way to a neighbouring cell's colour that a cell's range extends
IGNORED_CELLS = 2  # worst cells left out of the distance
WINDOW_SIZES = (16.5, 16.0, 15.5)  # crop windows, in cells of the 17×17 thumbnail
CANDIDATE_WINDOWS = 2  # crop windows per axis compared cell by cell
_CHUNK = 8192  # candidate pairs compared per numpy pass (bounded memory)


def content_box(rgb: Image.Image) -> tuple[int, int, int, int]:
    """The box left after trimming bright bars (border padding, a plain white product backdrop) off
    each edge, keeping a margin of them; the whole image when it is a bar throughout.

    A bar line is a line of bright pixels (BAR_BRIGHT) that lie, but for a few, within
    ``BAR_TOLERANCE`` of the brightness of the edge's outermost line. The test is relative, so a copy
    whose brightness moved by a few levels trims the same bars as its original (a fixed "white"
    level does not: +-12 levels move a white backdrop across it), and JPEG noise on a flat backdrop
    stays inside the tolerance. Brightness alone, because JPEG smears strong colours into a white
    backdrop at half resolution (chroma subsampling); bright lines only, because dark or mid-tone
    backgrounds (night skies, walls, lawns) look flat after a low-quality re-encode and would be
    trimmed in one copy and not in another. Computed at most BAR_SIDE pixels on a side."""
    factor = max(1, -(-max(rgb.size) // BAR_SIDE))
    grey = rgb.convert("L")
    small = np.asarray(grey.reduce(factor) if factor > 1 else grey, dtype=np.int16)
    height, width = small.shape
    top, bottom = _bar_lines(small), _bar_lines(small[::-1])
    left, right = _bar_lines(small.T), _bar_lines(small.T[::-1])
    if top + bottom >= height or left + right >= width:
        return (0, 0, rgb.width, rgb.height)
    # keep a margin of each bar (at most half of it) around the content, so that where one copy's
    # trimming stopped a pixel early or late (noise, blur) the content's edge lies inside both thumbnails
    margin_x, margin_y = BAR_MARGIN * (width - left - right), BAR_MARGIN * (height - top - bottom)
    top, bottom = top - min(top / 2, margin_y), bottom - min(bottom / 2, margin_y)
    left, right = left - min(left / 2, margin_x), right - min(right / 2, margin_x)
    scale_x, scale_y = rgb.width / width, rgb.height / height
    return (round(left * scale_x), round(top * scale_y),
            rgb.width - round(right * scale_x), rgb.height - round(bottom * scale_y))


def _bar_lines(levels: np.ndarray) -> int:
    """How many lines of ``levels`` ([lines, length] brightness), from the first, are bar lines."""
    reference = np.median(levels[0])
    if reference < BAR_BRIGHT:
        return 0
    bar = (np.abs(levels - reference) <= BAR_TOLERANCE).mean(axis=1) >= BAR_FRACTION
    return len(bar) if bar.all() else int(np.argmin(bar))


def content_features(rgb: Image.Image, box: tuple[int, int, int, int]) -> tuple[bytes, float, float]:
    """(thumbnails as ``THUMB_BYTES`` bytes: 16×16 then 17×17 RGB, texture, log aspect ratio) of an
    RGB image's content, the :func:`content_box` ``box``."""
    width, height = box[2] - box[0], box[3] - box[1]
    thumbnails = b"".join(
        rgb.resize((side, side), Image.BOX, box=box).tobytes() for side in (THUMB_SIDE, THUMB_SIDE + 1)
    )
    grey = np.asarray(rgb.convert("L").resize((TEXTURE_SIDE, TEXTURE_SIDE), Image.BILINEAR, box=box), dtype=np.float32)
    texture = float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())
    return thumbnails, texture, float(np.log(width / height))


def thumbnail_distance(left: np.ndarray, right: np.ndarray, *, stop_at: float | None = None) -> np.ndarray:
    """Distance of each aligned pair of ``[m, THUMB_BYTES]`` uint8 thumbnails: the smallest
    :func:`_aligned_distance` over the alignments. First the same framing (16×16 against 16×16);
    then each side as a crop of the other: its 16×16 against windows of the other's 17×17 (crops of
    3-9% of a side, cut anywhere between its two ends), the ``CANDIDATE_WINDOWS`` best per axis by
    the colour profiles. With ``stop_at``, a pair within it after one step skips the rest."""
    side = THUMB_SIDE
    best = np.full(len(left), np.inf, dtype=np.float32)
    for start in range(0, len(left), _CHUNK):
        smalls, larges = [], []
        for thumbnails in (left[start : start + _CHUNK], right[start : start + _CHUNK]):
            smalls.append(thumbnails[:, :_SMALL].reshape(-1, side, side, 3).astype(np.float32))
            larges.append(thumbnails[:, _SMALL:].reshape(-1, side + 1, side + 1, 3).astype(np.float32))
        chunk = best[start : start + _CHUNK]  # a view: updated in place
        chunk[:] = _aligned_distance(smalls[0], smalls[1])
        for crop in (0, 1):  # side ``crop`` is the cropped one
            pending = np.arange(len(chunk)) if stop_at is None else np.flatnonzero(chunk > stop_at)
            if not len(pending):
                break
            cropped, whole = smalls[crop][pending], larges[1 - crop][pending]
            rows = _closest_windows(cropped.mean(axis=2), whole.mean(axis=2))
            columns = _closest_windows(cropped.mean(axis=1), whole.mean(axis=1))
            for row_window in rows:
                for column_window in columns:
                    window = _resample(whole, _WINDOWS[row_window], _WINDOWS[column_window])
                    chunk[pending] = np.minimum(chunk[pending], _aligned_distance(cropped, window))
    return best


def _closest_windows(profile: np.ndarray, whole_profile: np.ndarray) -> list[np.ndarray]:
    """Indices into :data:`_WINDOWS` of the CANDIDATE_WINDOWS windows of one axis whose resampled
    ``whole_profile`` ([m, 17, 3]: the mean colour of each line) is closest to ``profile`` ([m, 16, 3])
    in mean absolute difference, after the mean brightness shift."""
    difference = np.einsum("kiy,myc->mkic", _WINDOWS, whole_profile) - profile[:, None]
    shift = difference.mean(axis=(2, 3), keepdims=True).clip(-BRIGHTNESS_SHIFT, BRIGHTNESS_SHIFT)
    order = np.argsort(np.abs(difference - shift).mean(axis=(2, 3)), axis=1)
    return [order[:, k] for k in range(CANDIDATE_WINDOWS)]


def _resample(whole: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Per pair, ``rows[m] @ whole[m] @ columns[m].T`` for each colour: [m, 16, 16, 3] windows."""
    count, side = len(whole), THUMB_SIDE
    by_rows = (rows @ whole.reshape(count, side + 1, -1)).reshape(count, side, side + 1, 3)
    return np.einsum("miyc,mjy->mijc", by_rows, columns)


def _window_matrix(size: float, offset: float) -> np.ndarray:
    """[16, 17] weights that box-resample the 17 cells of one axis to the 16 cells of the window of
    ``size`` cells starting at ``offset``: each output cell averages the input it covers."""
    edges = offset + np.arange(THUMB_SIDE + 1) * size / THUMB_SIDE
    cells = np.arange(THUMB_SIDE + 1)
    overlap = np.minimum(edges[1:, None], cells[None, :] + 1) - np.maximum(edges[:-1, None], cells[None, :])
    return (overlap.clip(min=0) / (size / THUMB_SIDE)).astype(np.float32)


# per axis: a crop keeps 16.5 / 17 to 15.5 / 17 (3-9%) of the side, cut anywhere between its ends
_WINDOWS = np.stack([
    _window_matrix(size, offset) for size in WINDOW_SIZES for offset in np.linspace(0, THUMB_SIDE + 1 - size, 3)
])


def thumbnails_agree(left: np.ndarray, right: np.ndarray, tolerance: float) -> np.ndarray:
    """Mask of the aligned pairs of thumbnails whose :func:`thumbnail_distance` is within ``tolerance``."""
    return thumbnail_distance(left, right, stop_at=tolerance) <= tolerance


def _aligned_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance of aligned ``[m, S, S, 3]`` thumbnails: after moving ``y`` by the uniform brightness
    shift (at most BRIGHTNESS_SHIFT levels) that best matches ``x``, the symmetric shift-tolerant
    difference of the cells, largest but IGNORED_CELLS."""
    if not len(x):
        return np.empty(0, dtype=np.float32)
    shift = np.median((y - x).reshape(len(x), -1), axis=1).clip(-BRIGHTNESS_SHIFT, BRIGHTNESS_SHIFT)
    y = y - shift[:, None, None, None]
    cells = np.maximum(_tolerant(x, y), _tolerant(y, x)).reshape(len(x), -1)
    return np.partition(cells, cells.shape[1] - 1 - IGNORED_CELLS, axis=1)[:, -1 - IGNORED_CELLS]


def _tolerant(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each cell of ``a`` ([m, S, S, 3]), how far (largest channel) its colour lies outside the
    range that ``b``'s cells span towards their neighbours within one cell (REACH of the way to the
    most extreme one). A cell that straddles an edge mixes the colours on both sides, which lie in
    that range, so sub-cell misalignment costs little."""
    side = a.shape[1]
    padded = np.pad(b, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    low, high = b.copy(), b.copy()
    for dy in range(3):
        for dx in range(3):
            neighbour = padded[:, dy : dy + side, dx : dx + side]
            np.minimum(low, neighbour, out=low)
            np.maximum(high, neighbour, out=high)
    low = b + REACH * (low - b)
    high = b + REACH * (high - b)
    return np.maximum(low - a, a - high).clip(min=0).max(axis=3)


def mirrored_thumbnails(thumbnails: np.ndarray) -> np.ndarray:
    """``[m, THUMB_BYTES]`` thumbnails of the pictures flipped left to right."""
    side = THUMB_SIDE
    small = thumbnails[:, :_SMALL].reshape(-1, side, side, 3)[:, :, ::-1]
    large = thumbnails[:, _SMALL:].reshape(-1, side + 1, side + 1, 3)[:, :, ::-1]
    return np.concatenate([small.reshape(-1, _SMALL), large.reshape(-1, THUMB_BYTES - _SMALL)], axis=1)


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
