import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmdata.download.image import ENCODE_FORMATS, RESIZE_MODES, ImageOptions, process_image
from mmdata.schemas.samples import STATUSES

# img2dataset's resizer test images are named WIDTH_HEIGHT.jpg; its expectations depend only on
# the sizes, so where the files are absent a generated JPEG of the same size stands in.
# shared/ lies beside the project root (on developer machines and in CI alike)
PEER_DIR = Path(__file__).resolve().parents[3] / "shared" / "peer-data" / "img2dataset-resize"
PEER_SIZES = [(123, 456), (208, 495), (321, 421), (389, 535), (416, 264), (456, 123), (524, 316)]
MAGIC = {"jpg": b"\xff\xd8\xff", "png": b"\x89PNG", "webp": b"RIFF"}


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    """A smooth RGB test picture (compresses like a photo, unlike noise)."""
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    return Image.fromarray(np.stack([x, y, (x + y) / 2], axis=-1).astype(np.uint8), "RGB")


def decoded(result) -> Image.Image:
    image = Image.open(io.BytesIO(result.data))
    image.load()
    return image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with no pixel data worth the name."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def expected_size(width: int, height: int, size: int, mode: str) -> tuple[int, int]:
    """img2dataset's documented output sizes."""
    if mode == "no":
        return width, height
    if mode in ("border", "center_crop", "fixed"):
        return size, size
    side = min(width, height) if mode == "keep_ratio" else max(width, height)
    return round(width * size / side), round(height * size / side)


# --- img2dataset's own resizer expectations, on its own test images ---------------------------


@functools.lru_cache(maxsize=None)
def peer_image(width: int, height: int) -> bytes:
    path = PEER_DIR / f"{width}_{height}.jpg"
    return path.read_bytes() if path.is_file() else encode(gradient(width, height), "JPEG")


@pytest.mark.parametrize("width, height", PEER_SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("size", [64, 256, 400])
@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_peer_images_get_img2dataset_sizes(width, height, size, mode):
    result = process_image(peer_image(width, height), ImageOptions(image_size=size, resize_mode=mode))
    assert result.status == "success", result.error_message
    assert (result.width, result.height) == expected_size(width, height, size, mode)
    assert (result.original_width, result.original_height) == (width, height)
    image = decoded(result)
    assert image.size == (result.width, result.height)
    assert image.mode == "RGB" and image.format == "JPEG"


@pytest.mark.skipif(not PEER_DIR.is_dir(), reason="img2dataset peer images not on this machine")
def test_peer_sizes_list_the_peer_files():
    assert sorted(f"{w}_{h}.jpg" for w, h in PEER_SIZES) == sorted(p.name for p in PEER_DIR.glob("*.jpg"))


def test_peer_images_filter_counts_match_img2dataset():
    options = ImageOptions(resize_mode="no", min_image_size=200, max_aspect_ratio=1.5)
    results = [process_image(peer_image(*size), options) for size in PEER_SIZES]
    outcomes = [(r.status, r.error_class) for r in results]
    assert outcomes.count(("success", None)) == 2
    assert outcomes.count(("filtered", "too_small")) == 2
    assert outcomes.count(("filtered", "aspect_ratio")) == 3
    for result in results:
        assert result.status in STATUSES
        assert (result.status == "success") == (result.error_message is None)


# --- sizes and formats -------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def gradient_jpeg(width: int, height: int) -> bytes:
    return encode(gradient(width, height), "JPEG", quality=90)


@pytest.mark.parametrize("source", [(640, 480), (300, 1000), (100, 60), (257, 256), (1600, 1200)])
@pytest.mark.parametrize("size", [32, 256])
@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("fmt", ENCODE_FORMATS)
def test_resize_mode_size_format_grid(source, size, mode, fmt):
    body = gradient_jpeg(*source)
    result = process_image(body, ImageOptions(image_size=size, resize_mode=mode, encode_format=fmt, encode_quality=80))
    assert result.status == "success", result.error_message
    assert result.extension == fmt and result.data.startswith(MAGIC[fmt])
    assert (result.width, result.height) == expected_size(*source, size, mode)
    image = decoded(result)
    assert image.size == (result.width, result.height) and image.mode == "RGB"


def test_extreme_aspect_ratio_keeps_at_least_one_pixel():
    result = process_image(encode(gradient(4000, 3)), ImageOptions(image_size=64, resize_mode="keep_ratio_largest"))
    assert result.status == "success"
    assert (result.width, result.height) == (64, 1)


def test_border_pads_with_white_and_centres():
    """A wide black picture: rows above and below it are white padding (img2dataset's colour)."""
    body = encode(Image.new("RGB", (400, 200), (0, 0, 0)))
    result = process_image(body, ImageOptions(image_size=100, resize_mode="border", encode_format="png"))
    pixels = np.asarray(decoded(result))
    assert pixels.shape == (100, 100, 3)
    assert (pixels[:24] == 255).all() and (pixels[76:] == 255).all()
    assert (pixels[26:74] == 0).all()


@pytest.mark.parametrize("mode", ["center_crop", "keep_ratio", "border"])
def test_downscaled_jpeg_matches_full_decode(mode):
    """Reduced-scale JPEG decoding and crop-in-resize give the picture a full decode gives:
    left red / right blue halves keep their boundary in the middle."""
    array = np.zeros((1500, 3000, 3), np.uint8)
    array[:, :1500] = (255, 0, 0)
    array[:, 1500:] = (0, 0, 255)
    body = encode(Image.fromarray(array), "JPEG", quality=95)
    result = process_image(body, ImageOptions(image_size=128, resize_mode=mode, encode_format="png"))
    pixels = np.asarray(decoded(result)).astype(int)
    middle_row = pixels[pixels.shape[0] // 2]
    centre = pixels.shape[1] // 2
    assert middle_row[centre - 3, 0] > 200 and middle_row[centre - 3, 2] < 60
    assert middle_row[centre + 3, 2] > 200 and middle_row[centre + 3, 0] < 60
    if mode == "keep_ratio":
        reference = Image.open(io.BytesIO(body)).convert("RGB").resize((256, 128), Image.Resampling.LANCZOS)
        assert np.abs(pixels - np.asarray(reference).astype(int)).mean() < 3


@pytest.mark.parametrize("mode", ["keep_ratio_largest", "center_crop"])
def test_reduced_scale_decode_keeps_geometry_exact(mode):
    """Odd-sized JPEG with fine vertical stripes: the drafted decode (ceil(2047 / 8) = 256 pixels
    holding 255.875 of content) must resample the same region a full decode does, or the
    stripes drift out of phase."""
    width, height = 2047, 1023
    row = (128 + 100 * np.cos(2 * np.pi * np.arange(width) / 100)).astype(np.uint8)
    body = encode(Image.fromarray(np.repeat(np.repeat(row[None, :, None], height, 0), 3, 2)), "JPEG", quality=95)
    result = process_image(body, ImageOptions(image_size=200, resize_mode=mode, encode_format="png"))
    full = Image.open(io.BytesIO(body)).convert("RGB")
    if mode == "keep_ratio_largest":
        reference = full.resize((200, 100), Image.Resampling.LANCZOS)
    else:
        resized_width = round(width * 200 / height)
        left = (resized_width - 200) // 2 * width / resized_width
        reference = full.resize(
            (200, 200), Image.Resampling.LANCZOS, box=(left, 0, left + 200 * width / resized_width, height)
        )
    difference = np.abs(np.asarray(decoded(result)).astype(int) - np.asarray(reference).astype(int)).mean()
    assert difference < 1.5


# --- pixel modes -------------------------------------------------------------------------------


def rgba_probe() -> Image.Image:
    """Opaque red, transparent, and half-transparent green pixels."""
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    image.putpixel((1, 1), (0, 0, 0, 0))
    image.putpixel((2, 2), (0, 255, 0, 128))
    return image


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(encode(rgba_probe(), "PNG"), id="rgba-png"),
        pytest.param(encode(rgba_probe(), "WEBP", lossless=True), id="rgba-webp"),
    ],
)
def test_alpha_is_composited_over_white(body):
    result = process_image(body, ImageOptions(resize_mode="no", encode_format="png"))
    image = decoded(result)
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == (255, 255, 255)
    assert image.getpixel((0, 0))[0] > 240 and image.getpixel((0, 0))[1] < 15
    red, green, blue = image.getpixel((2, 2))
    assert green == 255 and 120 <= red <= 135 and 120 <= blue <= 135


def test_grey_alpha_is_composited_over_white():
    image = Image.new("LA", (4, 4), (0, 255))
    image.putpixel((0, 0), (0, 0))
    result = process_image(encode(image), ImageOptions(resize_mode="no", encode_format="png"))
    out = decoded(result)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (0, 0, 0)


@pytest.mark.parametrize("mode, colour, key", [("RGB", (10, 20, 30), (10, 20, 30)), ("L", 77, 77)])
def test_colour_keyed_png_is_composited_over_white(mode, colour, key):
    image = Image.new(mode, (4, 4), colour)
    image.putpixel((3, 3), 0)
    out = decoded(process_image(encode(image, transparency=key), ImageOptions(resize_mode="no", encode_format="png")))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((3, 3)) == (0, 0, 0)


def test_palette_with_transparency_is_composited_over_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 1)
    for fmt in ("PNG", "GIF"):
        body = encode(image, fmt, transparency=1)
        out = decoded(process_image(body, ImageOptions(resize_mode="no", encode_format="png")))
        assert out.mode == "RGB"
        assert out.getpixel((0, 0)) == (255, 255, 255), fmt
        assert out.getpixel((1, 1)) == (255, 0, 0), fmt


@pytest.mark.parametrize(
    "image, fmt",
    [
        pytest.param(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG", id="cmyk-jpeg"),
        pytest.param(Image.new("L", (64, 48), 90), "JPEG", id="grey-jpeg"),
        pytest.param(Image.new("1", (64, 48), 1), "PNG", id="bilevel-png"),
        pytest.param(Image.new("P", (64, 48), 3), "PNG", id="palette-png"),
        pytest.param(Image.fromarray(np.full((48, 64), 40000, np.uint16)), "PNG", id="grey16-png"),
        pytest.param(
            Image.frombytes("I;16B", (64, 48), np.full((48, 64), 40000, ">u2").tobytes()), "TIFF", id="grey16be-tiff"
        ),
        pytest.param(Image.new("RGB", (64, 48), (10, 200, 30)), "BMP", id="rgb-bmp"),
        pytest.param(Image.new("RGB", (64, 48), (10, 200, 30)), "TIFF", id="rgb-tiff"),
    ],
)
@pytest.mark.parametrize("mode", ["no", "border"])
def test_every_pixel_mode_becomes_rgb(image, fmt, mode):
    result = process_image(encode(image, fmt), ImageOptions(image_size=32, resize_mode=mode, encode_format="png"))
    assert result.status == "success", result.error_message
    out = decoded(result)
    assert out.mode == "RGB"
    centre = out.getpixel((out.size[0] // 2, out.size[1] // 2))
    expected = (156, 156, 156) if image.mode.startswith("I;16") else image.convert("RGB").getpixel((0, 0))
    assert all(abs(a - b) <= 6 for a, b in zip(centre, expected)), (centre, expected)


def test_cmyk_is_red_after_conversion():
    body = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    red, green, blue = decoded(
        process_image(body, ImageOptions(resize_mode="no", encode_format="png"))
    ).getpixel((8, 8))
    assert red > 230 and green < 30 and blue < 30


# --- refusals ----------------------------------------------------------------------------------


def test_pixel_bomb_refused_from_header():
    """100k x 100k would need 30 GB decoded; the header alone is enough to refuse it."""
    result = process_image(png_header_only(100_000, 100_000), ImageOptions())
    assert (result.status, result.error_class) == ("failed_to_decode", "pixel_bomb")
    assert result.data is None and result.error_message


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_bomb_reports_header_size():
    result = process_image(png_header_only(10_000, 10_000), ImageOptions())
    assert (result.status, result.error_class) == ("failed_to_decode", "pixel_bomb")
    assert (result.original_width, result.original_height) == (10_000, 10_000)
    assert "10000x10000" in result.error_message


def test_pixel_limit_is_configurable():
    body = encode(gradient(120, 100))
    assert process_image(body, ImageOptions(max_image_pixels=12_000)).status == "success"
    result = process_image(body, ImageOptions(max_image_pixels=11_999))
    assert (result.status, result.error_class) == ("failed_to_decode", "pixel_bomb")


def test_pillow_own_bomb_guard_is_reported_as_pixel_bomb():
    """Beyond twice Pillow's global limit, Image.open itself refuses, even with our limit raised."""
    result = process_image(png_header_only(60_000, 60_000), ImageOptions(max_image_pixels=10**12))
    assert (result.status, result.error_class) == ("failed_to_decode", "pixel_bomb")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_image_fails_to_decode(fmt):
    body = encode(gradient(300, 200), fmt, quality=90) if fmt != "PNG" else encode(gradient(300, 200))
    result = process_image(body[: len(body) // 2], ImageOptions())
    assert result.status == "failed_to_decode"
    assert result.error_class in ("truncated", "corrupt")
    assert result.data is None and result.error_message
    if fmt == "JPEG":
        assert result.error_class == "truncated"


@pytest.mark.parametrize(
    "body",
    [b"", b"<!DOCTYPE html><html><body>404</body></html>", b"\x00\x01garbage" * 100, b"RIFF\x00\x00\x00\x00WAVEfmt "],
    ids=["empty", "html", "garbage", "riff-wave"],
)
def test_not_an_image(body):
    result = process_image(body, ImageOptions())
    assert (result.status, result.error_class) == ("failed_to_decode", "not_an_image")
    assert result.error_message and result.data is None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_broken_header_is_a_corrupt_image(fmt):
    body = encode(gradient(40, 30), fmt)[:20]
    result = process_image(body, ImageOptions())
    assert result.status == "failed_to_decode"
    assert result.error_class in ("corrupt", "truncated"), result.error_message


def test_html_is_named_in_message():
    result = process_image(b"  <html><head></head></html>", ImageOptions())
    assert result.error_class == "not_an_image" and "HTML" in result.error_message


def test_filters_run_on_the_original_size_before_decoding():
    """A too-small image is filtered even if its body is truncated: no decode was needed."""
    body = encode(gradient(100, 50), "JPEG")
    small = process_image(body[:-100], ImageOptions(min_image_size=60))
    assert (small.status, small.error_class) == ("filtered", "too_small")
    wide = process_image(body, ImageOptions(max_aspect_ratio=1.9))
    assert (wide.status, wide.error_class) == ("filtered", "aspect_ratio")
    assert (wide.original_width, wide.original_height) == (100, 50)
    assert process_image(body, ImageOptions(max_aspect_ratio=2.0, min_image_size=50)).status == "success"


def test_eps_is_never_parsed():
    """Formats outside the web set (EPS would run Ghostscript) are not images to us."""
    result = process_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", ImageOptions())
    assert result.error_class == "not_an_image"


# --- skip_reencode -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, mode, fmt",
    [
        ((256, 256), "border", "JPEG"), ((300, 200), "no", "JPEG"), ((400, 256), "keep_ratio", "JPEG"),
        ((300, 200), "no", "PNG"),
    ],
)
def test_skip_reencode_keeps_original_bytes(source, mode, fmt):
    body = encode(gradient(*source), fmt)
    encode_format = {"JPEG": "jpg", "PNG": "png"}[fmt]
    result = process_image(body, ImageOptions(resize_mode=mode, encode_format=encode_format, skip_reencode=True))
    assert result.status == "success"
    assert result.data == body
    assert (result.width, result.height) == source


@pytest.mark.parametrize(
    "body, options",
    [
        (encode(gradient(300, 200), "JPEG"), ImageOptions(resize_mode="border", skip_reencode=True)),
        (encode(gradient(300, 200), "PNG"), ImageOptions(resize_mode="no", skip_reencode=True)),
        (encode(rgba_probe(), "PNG"), ImageOptions(resize_mode="no", encode_format="png", skip_reencode=True)),
        (encode(Image.new("L", (300, 200)), "JPEG"), ImageOptions(resize_mode="no", skip_reencode=True)),
        (
            encode(Image.new("RGB", (30, 20)), transparency=(0, 0, 0)),
            ImageOptions(resize_mode="no", encode_format="png", skip_reencode=True),
        ),
    ],
    ids=["needs-resize", "other-format", "has-alpha", "grey", "colour-key"],
)
def test_skip_reencode_reencodes_when_something_changes(body, options):
    result = process_image(body, options)
    assert result.status == "success"
    assert result.data != body
    assert decoded(result).mode == "RGB"


def test_skip_reencode_still_refuses_truncated_bodies():
    body = encode(gradient(300, 200), "JPEG")
    result = process_image(body[: len(body) // 2], ImageOptions(resize_mode="no", skip_reencode=True))
    assert (result.status, result.error_class) == ("failed_to_decode", "truncated")


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resize_mode": "stretch"},
        {"encode_format": "gif"},
        {"image_size": 0},
        {"encode_quality": 101},
        {"min_image_size": -1},
        {"max_aspect_ratio": 0.5},
        {"max_image_pixels": 0},
    ],
)
def test_invalid_options_raise(kwargs):
    with pytest.raises(ValueError):
        ImageOptions(**kwargs)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        ImageOptions(256)  # type: ignore[misc]


@pytest.mark.parametrize("quality", [0, 9, 95])
def test_png_quality_is_a_compression_level(quality):
    result = process_image(encode(gradient(64, 64), "JPEG"), ImageOptions(encode_format="png", encode_quality=quality))
    assert result.status == "success" and decoded(result).format == "PNG"


def test_threads_give_the_same_results_as_one_thread():
    """The download worker calls process_image from many threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [gradient_jpeg(*size) for size in [(640, 480), (300, 1000), (1600, 1200), (100, 60)]] * 4
    bodies.append(encode(rgba_probe()))
    options = ImageOptions(image_size=64, resize_mode="center_crop")
    expected = [process_image(body, options) for body in bodies]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda body: process_image(body, options), bodies)) == expected


# --- img2dataset's resizer options ------------------------------------------------------------


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("source", [(100, 60), (300, 200), (600, 400)])
def test_resize_only_if_bigger_keeps_an_image_within_image_size(mode, source):
    """img2dataset's rule: keep_ratio/center_crop resize when the shorter side exceeds image_size,
    the other modes when the longer one does; otherwise the image is kept as it is (no crop, no border)."""
    size = 256
    options = ImageOptions(image_size=size, resize_mode=mode, resize_only_if_bigger=True)
    result = process_image(gradient_jpeg(*source), options)
    side = min(source) if mode in ("keep_ratio", "center_crop") else max(source)
    expected = expected_size(*source, size, mode) if side > size else source
    assert (result.width, result.height) == expected


@pytest.mark.parametrize("name, resample", [("area", Image.Resampling.BOX), ("AREA", Image.Resampling.BOX),
                                            ("linear", Image.Resampling.BILINEAR),
                                            ("nearest", Image.Resampling.NEAREST)])
def test_downscale_interpolation_is_the_pillow_filter_of_that_name(name, resample):
    source = gradient(500, 400)
    options = ImageOptions(image_size=256, resize_mode="keep_ratio", encode_format="png", downscale_interpolation=name)
    ours = np.asarray(decoded(process_image(encode(source), options)))
    assert (ours == np.asarray(source.resize((320, 256), resample))).all()


def test_upscale_interpolation_applies_to_upscales_only():
    source = encode(gradient(40, 30))
    options = dict(image_size=60, resize_mode="keep_ratio", encode_format="png")  # twice the size
    pixels = np.asarray(decoded(process_image(source, ImageOptions(**options, upscale_interpolation="nearest"))))
    assert (pixels[::2, ::2] == pixels[1::2, 1::2]).all()  # each source pixel became a 2x2 block
    smooth = np.asarray(decoded(process_image(source, ImageOptions(**options))))
    assert not (smooth[::2, ::2] == smooth[1::2, 1::2]).all()
    big = encode(gradient(80, 60))
    shrink = dict(image_size=20, resize_mode="keep_ratio", encode_format="png")
    nearest_up = process_image(big, ImageOptions(**shrink, upscale_interpolation="nearest"))
    assert nearest_up.data == process_image(big, ImageOptions(**shrink)).data


@pytest.mark.parametrize("kwargs", [{"upscale_interpolation": "bicubic2"}, {"downscale_interpolation": None},
                                    {"max_image_area": 0}, {"compute_hash": "sha1"}])
def test_invalid_resizer_options_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ImageOptions(**kwargs)


def test_max_image_area_filters_larger_images():
    body = encode(gradient(120, 100))
    assert process_image(body, ImageOptions(max_image_area=12_000)).status == "success"
    result = process_image(body, ImageOptions(max_image_area=11_999))
    assert (result.status, result.error_class) == ("filtered", "too_large")
    assert result.error_message.startswith("image area too large: 120x100 = 12000 pixels")
    assert (result.original_width, result.original_height) == (120, 100)


@pytest.mark.parametrize("fmt, extension", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"),
                                            ("BMP", "bmp"), ("TIFF", "tif")])
def test_disable_all_reencoding_stores_the_body_as_it_came(fmt, extension):
    image = gradient(300, 200).convert("P") if fmt == "GIF" else gradient(300, 200)
    body = encode(image, fmt)
    options = ImageOptions(image_size=64, resize_mode="center_crop", encode_format="webp", disable_all_reencoding=True)
    result = process_image(body, options)
    assert result.status == "success" and result.data == body and result.extension == extension
    assert (result.width, result.height, result.original_width, result.original_height) == (300, 200, 300, 200)


def test_disable_all_reencoding_still_refuses_what_is_not_an_image_or_too_large():
    options = ImageOptions(disable_all_reencoding=True, max_image_area=1000)
    assert process_image(b"<html><body>404</body></html>", options).error_class == "not_an_image"
    assert process_image(encode(gradient(40, 30)), options).error_class == "too_large"
