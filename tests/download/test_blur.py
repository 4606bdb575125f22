"""Blurring boxes (``bbox_col``) as img2dataset's blurrer does: against an independent float64
reference (OpenCV's Gaussian kernel and BORDER_REFLECT_101 written out here), through every resize
mode, and end to end in a download against the local HTTP server."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from http_server import image_bytes
from PIL import Image

import mmdata
from mmdata.download.blur import blur_boxes, parse_boxes
from mmdata.download.image import RESIZE_MODES, ImageOptions, process_image

FACE = (0.35, 0.30, 0.60, 0.65)
EDGE_FACE = (0.0, 0.70, 0.12, 0.88)  # touches the left edge: grows past it


# --- an independent reference: img2dataset's blurrer in float64, OpenCV's rules written out -------


def reflect_101(index: int, length: int) -> int:
    """OpenCV's borderInterpolate for BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba), any overshoot."""
    if length == 1:
        return 0
    while not 0 <= index < length:
        index = -index if index < 0 else 2 * (length - 1) - index
    return index


def gaussian_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """cv2.GaussianBlur(values, (k, k), sigma) with k = 2 * ceil(4 * sigma) + 1, in float64: along
    each axis a matrix whose row i holds the kernel taps of pixel i, reflections folded in."""
    radius = math.ceil(4 * sigma)
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-(taps**2) / (2 * sigma**2))
    weights /= weights.sum()

    def along(length: int) -> np.ndarray:
        matrix = np.zeros((length, length))
        for i in range(length):
            for tap, weight in zip(taps, weights):
                matrix[i, reflect_101(i + tap, length)] += weight
        return matrix

    height, width = values.shape[:2]
    planes = values.astype(np.float64).reshape(height, width, -1)
    down, across = along(height), along(width)
    blurred = np.stack([down @ planes[:, :, c] @ across.T for c in range(planes.shape[2])], axis=-1)
    return blurred.reshape(values.shape)


def reference_blur(pixels: np.ndarray, boxes) -> np.ndarray:
    """img2dataset's BoundingBoxBlurrer, with grown boxes clipped to the image and the blend rounded."""
    height, width = pixels.shape[:2]
    mask = np.zeros((height, width, 1))
    longest = 0
    for x_min, y_min, x_max, y_max in boxes:
        left, top = int(max(0.0, x_min) * width), int(max(0.0, y_min) * height)
        right, bottom = int(min(1.0, x_max) * width), int(min(1.0, y_max) * height)
        side = max(right - left, bottom - top)
        longest = max(longest, side)
        grown = [int(left - 0.1 * side), int(top - 0.1 * side), int(right + 0.1 * side), int(bottom + 0.1 * side)]
        mask[max(0, grown[1]):grown[3], max(0, grown[0]):grown[2]] = 1
    sigma = 0.1 * longest
    blurred, blurred_mask = gaussian_blur(pixels, sigma), gaussian_blur(mask, sigma)
    return np.rint(pixels * (1 - blurred_mask) + blurred * blurred_mask).astype(np.uint8)


def reach(shape, boxes) -> np.ndarray:
    """Where the blur may change pixels: within the kernel radius of a grown box."""
    height, width = shape[:2]
    near = np.zeros((height, width), bool)
    sides = [max(int(x1 * width) - int(x0 * width), int(y1 * height) - int(y0 * height)) for x0, y0, x1, y1 in boxes]
    radius = math.ceil(4 * 0.1 * max(sides)) + 1
    for (x0, y0, x1, y1), side in zip(boxes, sides):
        grow = 0.1 * side + radius
        near[max(0, int(y0 * height - grow)):int(y1 * height + grow) + 1,
             max(0, int(x0 * width - grow)):int(x1 * width + grow) + 1] = True
    return near


def face_picture(width: int, height: int) -> np.ndarray:
    """A smooth gradient with sharp stripes inside the face boxes (what the blur must remove)."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([60 + 120 * x / width, 40 + 150 * y / height, 90 + 60 * (x + y) / (width + height)], -1)
    for x0, y0, x1, y1 in (FACE, EDGE_FACE):
        inside = (x >= x0 * width) & (x < x1 * width) & (y >= y0 * height) & (y < y1 * height)
        stripes = ((x // max(2, width // 60)) % 2) * 200 + 20
        pixels[inside] = stripes[inside][:, None]
    return pixels.astype(np.uint8)


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


# --- the blur itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, boxes",
    [
        ((300, 200), [FACE]),
        ((257, 190), [(0.7, 0.05, 1.0, 0.3), (0.05, 0.6, 0.2, 0.95)]),  # two faces, one at a corner
        ((64, 48), [(0.0, 0.0, 0.9, 0.95)]),  # the kernel is wider than the image: reflected twice
        ((20, 9), [(-0.2, 0.1, 1.2, 1.0)]),  # a box past the edges is clipped
        ((1, 40), [(0.0, 0.2, 1.0, 0.9)]),  # one pixel wide
    ],
)
def test_blur_matches_the_reference(size, boxes):
    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    ours = blur_boxes(pixels, boxes)
    assert np.abs(ours.astype(int) - reference_blur(pixels, boxes)).max() <= 1
    assert (ours != pixels).any()
    outside = ~reach(pixels.shape, boxes)
    assert (ours[outside] == pixels[outside]).all()


def test_face_touching_the_left_edge_is_blurred_there():
    """img2dataset's slicing wraps a negative left edge around and leaves such a face sharp; here the
    grown box is clipped to the image."""
    pixels = face_picture(300, 200)
    ours = blur_boxes(pixels, [EDGE_FACE])
    face_rows = slice(int(0.72 * 200), int(0.86 * 200))
    column_steps = np.abs(np.diff(ours[face_rows, :30].astype(int), axis=1)).max()
    assert np.abs(np.diff(pixels[face_rows, :30].astype(int), axis=1)).max() == 200
    assert column_steps < 40


@pytest.mark.parametrize("boxes", [[], [(0.5, 0.5, 0.5, 0.5)], [(0.3, 0.3, 0.3001, 0.3001)]])
def test_nothing_to_blur_returns_the_pixels_themselves(boxes):
    pixels = face_picture(100, 80)
    assert blur_boxes(pixels, boxes) is pixels


@pytest.mark.parametrize(
    "value, boxes",
    [
        (None, ()),
        ([], ()),
        ([[0.1, 0.2, 0.3, 0.4]], ((0.1, 0.2, 0.3, 0.4),)),
        (((0, 0, 1, 1), [0.5, 0.5, 0.75, 1.2]), ((0.0, 0.0, 1.0, 1.0), (0.5, 0.5, 0.75, 1.2))),
        ("[[0.1, 0.2, 0.3, 0.4]]", ((0.1, 0.2, 0.3, 0.4),)),  # as a csv/tsv holds it
        ("null", ()),
    ],
)
def test_parse_boxes(value, boxes):
    assert parse_boxes(value) == boxes


@pytest.mark.parametrize(
    "value, message",
    [
        (0.5, "must be a list"),
        ([0.1, 0.2, 0.3, 0.4], r"\[x_min, y_min, x_max, y_max\]"),  # one box, not a list of boxes
        ([[0.1, 0.2, 0.3]], "4 numbers"),
        ([[0.1, 0.2, "a", 0.4]], "finite numbers"),
        ([[0.1, 0.2, float("nan"), 0.4]], "finite numbers"),
        ([[0.5, 0.2, 0.3, 0.4]], "x_max < x_min"),
        ([[10, 20, 110, 140]], "fractions of the image"),  # pixel units
        ("[[0.1, 0.2", "not a JSON list"),
    ],
)
def test_malformed_boxes_say_what_is_wrong(value, message):
    with pytest.raises(ValueError, match=message):
        parse_boxes(value)


# --- through process_image, every resize mode -------------------------------------------------


def reference_output(body: bytes, options: ImageOptions, boxes) -> np.ndarray:
    """img2dataset's order on a full decode: resize the whole image, blur, then crop or pad."""
    image = Image.open(io.BytesIO(body)).convert("RGB")
    width, height = image.size
    size, mode = options.image_size, options.resize_mode
    side = min(width, height) if mode in ("keep_ratio", "center_crop") else max(width, height)
    if mode == "no":
        resized = image.size
    elif mode == "fixed":
        resized = (size, size)
    else:
        resized = (max(1, round(width * size / side)), max(1, round(height * size / side)))
    if resized != image.size:
        downscale = side > size
        image = image.resize(resized, Image.Resampling.BICUBIC if downscale else Image.Resampling.LANCZOS)
    pixels = reference_blur(np.asarray(image), boxes)
    if mode == "center_crop":
        left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
        pixels = pixels[top:top + size, left:left + size]
    if mode == "border":
        canvas = np.full((size, size, 3), 255, np.uint8)
        left, top = (size - resized[0]) // 2, (size - resized[1]) // 2
        canvas[top:top + resized[1], left:left + resized[0]] = pixels
        pixels = canvas
    return pixels.astype(int)


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("source, size", [(("PNG", 600, 450), 224), (("JPEG", 800, 600), 256),
                                          (("PNG", 180, 120), 256)], ids=["png-down", "jpeg-draft", "png-up"])
def test_every_resize_mode_blurs_as_img2dataset(mode, source, size):
    fmt, width, height = source
    body = encoded(face_picture(width, height), fmt)
    options = ImageOptions(image_size=size, resize_mode=mode, encode_format="png")
    boxes = [FACE, EDGE_FACE]
    result = process_image(body, options, boxes)
    assert result.status == "success", result.error_message
    ours, expected = decoded(result.data), reference_output(body, options, boxes)
    assert ours.shape == expected.shape
    difference = np.abs(ours - expected)
    if fmt == "PNG":
        assert difference.max() <= 1
    else:  # a JPEG is decoded at a reduced DCT scale: unlike a full decode at sharp edges only
        assert difference.mean() < 0.5 and np.percentile(difference, 99.9) <= 5, (difference.mean(), difference.max())

    # Beyond the blur's reach the picture is the unblurred one (a crop within a grey level: with boxes
    # the whole image is resized before cropping, without them only the kept region).
    plain = decoded(process_image(body, options).data)
    change = np.abs(ours - plain).max(axis=2)
    faces = reach_in_output(plain.shape, (width, height), options, boxes)
    assert change[faces].max() > 50
    assert change[~faces].max() <= (1 if mode == "center_crop" else 0)


def reach_in_output(shape, original, options: ImageOptions, boxes) -> np.ndarray:
    """`reach` in the stored image's pixels (the crop or padding of the mode applied)."""
    size, mode = options.image_size, options.resize_mode
    width, height = original
    side = min(width, height) if mode in ("keep_ratio", "center_crop") else max(width, height)
    resized = {"no": original, "fixed": (size, size)}.get(
        mode, (max(1, round(width * size / side)), max(1, round(height * size / side))))
    near = reach((resized[1], resized[0]), boxes)
    if mode == "center_crop":
        left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
        return near[top:top + size, left:left + size]
    if mode == "border":
        padded = np.zeros(shape[:2], bool)
        left, top = (size - resized[0]) // 2, (size - resized[1]) // 2
        padded[top:top + resized[1], left:left + resized[0]] = near
        return padded
    return near


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop"])
def test_blur_is_close_to_a_full_resolution_blur_then_resize(mode):
    """img2dataset blurs after resizing (sigma in output pixels); blurring the original with sigma
    in original pixels, then resizing, gives nearly the same picture."""
    width, height, size = 800, 600, 256
    pixels = face_picture(width, height)
    body = encoded(pixels, "JPEG")
    options = ImageOptions(image_size=size, resize_mode=mode, encode_format="png")
    boxes = [FACE, EDGE_FACE]
    ours = decoded(process_image(body, options, boxes).data)
    full = Image.fromarray(reference_blur(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), boxes))
    resized = (round(width * size / height), size)
    full = np.asarray(full.resize(resized, Image.Resampling.BICUBIC)).astype(int)
    if mode == "center_crop":
        left = (resized[0] - size) // 2
        full = full[:, left:left + size]
    difference = np.abs(ours - full)  # measured: mean 0.1, 99th percentile 2, at most 15 (a grown box's edge)
    assert difference.mean() < 0.5 and np.percentile(difference, 99) <= 3, (difference.mean(), difference.max())


def test_boxes_are_blurred_even_with_skip_reencode():
    body = encoded(face_picture(256, 256), "JPEG")
    options = ImageOptions(resize_mode="border", skip_reencode=True)
    assert process_image(body, options).data == body
    blurred = process_image(body, options, [FACE])
    assert blurred.status == "success" and blurred.data != body


def test_resize_only_if_bigger_blurs_at_the_original_size():
    pixels = face_picture(200, 150)
    body = encoded(pixels, "PNG")
    options = ImageOptions(image_size=256, resize_mode="center_crop", resize_only_if_bigger=True, encode_format="png")
    result = process_image(body, options, [FACE])
    assert (result.width, result.height) == (200, 150)
    assert np.abs(decoded(result.data) - reference_blur(pixels, [FACE])).max() <= 1


# --- end to end: bbox_col in a download ---------------------------------------------------------


def test_download_blurs_the_boxes_of_bbox_col(http_server, tmp_path):
    names = ["face-a", "face-b", "face-c", "face-d"]
    urls = [http_server.url(f"/img/{name}.jpg?w=160&h=120") for name in names]
    boxes = [[list(FACE)], None, [], [[0.1, 0.2, 0.3]]]
    pq.write_table(pa.table({"url": urls, "caption": names, "face_bboxes": boxes}), tmp_path / "in.parquet")
    options = dict(image_size=64, resize_mode="center_crop", encode_format="png")
    mmdata.download(input=tmp_path / "in.parquet", output_dir=tmp_path / "out", bbox_col="face_bboxes",
                    allow_network=["127.0.0.1/32"], executor="inline", **options)

    table = pq.read_table(tmp_path / "out" / "00000.parquet")
    rows = table.to_pylist()
    assert table.column("face_bboxes").to_pylist() == boxes  # kept beside the row, as img2dataset saves it
    assert [row["status"] for row in rows] == ["success", "success", "success", "failed_to_decode"]
    assert rows[3]["error_class"] == "invalid_bbox" and "face_bboxes" in rows[3]["error_message"]
    assert rows[3]["http_status"] is None and not http_server.hits("/img/face-d.jpg")  # refused before fetching
    from mmdata.shards import iter_samples

    stored = dict(iter_samples(tmp_path / "out" / "00000.tar"))
    image_options = ImageOptions(**options)
    for row, name, row_boxes in zip(rows[:3], names, boxes):
        body = image_bytes(name, "jpg", 160, 120)
        expected = process_image(body, image_options, [tuple(box) for box in row_boxes or []])
        assert stored[row["key"]]["png"] == expected.data, name
    assert stored[rows[0]["key"]]["png"] != process_image(image_bytes("face-a", "jpg", 160, 120), image_options).data
