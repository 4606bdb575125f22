"""Blur boxes of an image (DataComp's ``face_bboxes``) as img2dataset's blurrer does, without OpenCV.

img2dataset (``bbox_col``) blurs the resized image before any crop or padding: each box, given as
fractions of the image, becomes pixels (truncated), grows by 10% of its longer side on every edge,
and is set to 1 in a mask; the image and the mask are blurred with one Gaussian of sigma 0.1 x the
longest box side (before growing) in pixels, kernel size ``2 * ceil(4 * sigma) + 1``, borders
reflected (OpenCV's ``BORDER_REFLECT_101``); the blurred image is blended in through the blurred
mask. The same computation here is exact up to float rounding, with two differences: a grown box
is clipped to the image (img2dataset's slicing wraps a negative edge around, so a face touching
the left or top edge can stay sharp there), and the blend is rounded instead of truncated.

Only the region the blurred mask reaches is computed: pixels farther than the kernel from every
grown box are left as they are, and a row without boxes costs nothing.
"""

from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np

Box = tuple[float, float, float, float]

# A coordinate further than this outside 0..1 is not a fraction of the image (pixel units, most likely).
_OUTSIDE_TOLERANCE = 0.5
_GROWTH = 0.1  # each edge moves out by this fraction of the box's longer side
_SIGMA_PER_SIDE = 0.1  # sigma, as a fraction of the longest box side
_KERNEL_SIGMAS = 4  # the kernel reaches ceil(4 sigma) pixels each way (img2dataset's size rule)


def parse_boxes(value) -> tuple[Box, ...]:
    """The boxes of one row's bbox value: a list of ``[x_min, y_min, x_max, y_max]`` fractions of the
    image (or that list as JSON text, as csv/tsv inputs hold it). ``None`` and ``[]`` are no box.

    Raises ValueError saying what is wrong with the value (the row fails with that message).
    """
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"bbox value {_shown(value)} is not a JSON list of boxes") from None
        if value is None:
            return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"bbox value must be a list of [x_min, y_min, x_max, y_max] boxes, got {_shown(value)}")
    return tuple(_parse_box(box) for box in value)


def _parse_box(box) -> Box:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ValueError(f"a bbox must be [x_min, y_min, x_max, y_max] (4 numbers), got {_shown(box)}")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in box):
        raise ValueError(f"bbox coordinates must be finite numbers, got {_shown(box)}")
    x_min, y_min, x_max, y_max = (float(x) for x in box)
    if x_max < x_min or y_max < y_min:
        raise ValueError(f"bbox {_shown(box)} has x_max < x_min or y_max < y_min")
    if min(box) < -_OUTSIDE_TOLERANCE or max(box) > 1 + _OUTSIDE_TOLERANCE:
        raise ValueError(f"bbox {_shown(box)} is not in fractions of the image size (0..1)")
    return x_min, y_min, x_max, y_max


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def blur_boxes(pixels: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """``pixels`` (height x width x channels, uint8) with ``boxes`` blurred; ``pixels`` itself when
    nothing is to blur."""
    height, width = pixels.shape[:2]
    grown, longest = _grown_boxes(boxes, width, height)
    sigma = _SIGMA_PER_SIDE * longest
    if not grown or sigma <= 0:
        return pixels
    radius = math.ceil(_KERNEL_SIGMAS * sigma)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-(offsets**2) / (2 * sigma * sigma))
    weights /= weights.sum()

    # The blurred mask is non-zero only within `radius` of a grown box (the region to blend); the
    # blur there reads pixels up to `radius` further out (the source).
    lefts, tops, rights, bottoms = zip(*grown)
    region = (max(0, min(lefts) - radius), max(0, min(tops) - radius),
              min(width, max(rights) + radius), min(height, max(bottoms) + radius))
    source = (max(0, region[0] - radius), max(0, region[1] - radius),
              min(width, region[2] + radius), min(height, region[3] + radius))
    columns = slice(region[0] - source[0], region[2] - source[0])
    rows = slice(region[1] - source[1], region[3] - source[1])

    def blurred(plane: np.ndarray) -> np.ndarray:  # along rows, then along columns (as rows of the transpose)
        across = _gaussian_rows(plane, columns, weights)
        return _gaussian_rows(np.ascontiguousarray(across.T), rows, weights).T

    mask = np.zeros((source[3] - source[1], source[2] - source[0]), np.float32)
    for left, top, right, bottom in grown:
        mask[top - source[1]:bottom - source[1], left - source[0]:right - source[0]] = 1
    mask = blurred(mask)

    out = pixels.copy()
    patch = pixels[source[1]:source[3], source[0]:source[2]]
    for channel in range(pixels.shape[2]):
        original = patch[rows, columns, channel].astype(np.float32)
        blended = original + (blurred(patch[:, :, channel].astype(np.float32)) - original) * mask
        out[region[1]:region[3], region[0]:region[2], channel] = np.clip(np.rint(blended), 0, 255)
    return out


def _grown_boxes(boxes: Sequence[Box], width: int, height: int) -> tuple[list[tuple[int, int, int, int]], int]:
    """The boxes in pixels, grown and clipped to the image (empty ones dropped), and the longest
    side of any box before growing."""
    grown, longest = [], 0
    for x_min, y_min, x_max, y_max in boxes:
        left, right = (int(_unit(x) * width) for x in (x_min, x_max))
        top, bottom = (int(_unit(y) * height) for y in (y_min, y_max))
        side = max(right - left, bottom - top)
        longest = max(longest, side)
        margin = _GROWTH * side
        left, top = max(0, int(left - margin)), max(0, int(top - margin))
        right, bottom = min(width, int(right + margin)), min(height, int(bottom + margin))
        if right > left and bottom > top:
            grown.append((left, top, right, bottom))
    return grown, longest


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))


def _gaussian_rows(plane: np.ndarray, kept: slice, weights: np.ndarray) -> np.ndarray:
    """Each row of ``plane`` convolved with ``weights`` (its ends reflected as OpenCV's
    BORDER_REFLECT_101, which is numpy's "reflect"), at the ``kept`` columns only. By FFT: the cost
    does not grow with the kernel, which for a large face at full resolution spans hundreds of pixels.
    An end of a row that is not the image's lies ``radius`` beyond ``kept``, so no kept column sees
    the reflection there."""
    radius = len(weights) // 2
    padded = np.pad(plane, [(0, 0), (radius, radius)], mode="reflect")
    size = _fft_length(padded.shape[1])
    spectrum = np.fft.rfft(padded, size, axis=1) * np.fft.rfft(weights.astype(plane.dtype), size)
    full = np.fft.irfft(spectrum, size, axis=1)
    # full[:, j] sums weights[t] * padded[:, j - t] (cyclically: only j < 2 * radius wraps around),
    # so column i of the plane is full[:, i + 2 * radius].
    return full[:, kept.start + 2 * radius:kept.stop + 2 * radius]


def _fft_length(minimum: int) -> int:
    """The least 2^a 3^b 5^c >= ``minimum``: lengths the FFT handles fastest."""
    best = 1 << max(0, (minimum - 1).bit_length())
    power_of_five = 1
    while power_of_five < best:
        power_of_three = power_of_five
        while power_of_three < best:
            length = power_of_three
            while length < minimum:
                length *= 2
            best = min(best, length)
            power_of_three *= 3
        power_of_five *= 5
    return best
