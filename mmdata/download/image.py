"""Turn a downloaded body into the stored image: refuse, decode, resize, blur, re-encode.

Resize semantics follow img2dataset's resizer so outputs are drop-in compatible: sizes are
rounded the same way, ``border`` pads with white, alpha is composited over white,
``resize_only_if_bigger`` leaves an image already within ``image_size`` as it is (no crop, no
border), and boxes (``bbox_col``) are blurred on the resized image before it is cropped or padded
(:mod:`mmdata.download.blur`). Speed comes from three things img2dataset does not do:
size/aspect/area/pixel-bomb rules are checked from the header before any decode, JPEGs are decoded
at a reduced DCT scale (``Image.draft``), and crops are folded into the resize (only the kept
region is resampled, unless boxes must be blurred across the crop's edge).

Interpolation names are img2dataset's (OpenCV's); Pillow's filters stand in for them, and unlike
OpenCV's they are antialiased when downscaling (``area`` is Pillow's box filter, the same average).
"""

from __future__ import annotations

import dataclasses
import io
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, features

from mmdata.download.blur import Box, blur_boxes
from mmdata.download.exif import exif_json
from mmdata.schemas.samples import FAILED_TO_DECODE, FILTERED, HASH_FIELDS, OK, Outcome, OutcomeFields

# Our own max_image_pixels check runs first; Pillow's warning for the same thing is noise
# (a filter rather than catch_warnings, which is not thread-safe before Python 3.14).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop", "fixed")
ENCODE_FORMATS = ("jpg", "png", "webp")
# img2dataset's interpolation names (OpenCV's flags) and the Pillow filter each one means here.
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "linear": Image.Resampling.BILINEAR,
    "bilinear": Image.Resampling.BILINEAR,
    "cubic": Image.Resampling.BICUBIC,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
    "lanczos4": Image.Resampling.LANCZOS,
}
# Resize modes that fit the shorter side to image_size; the others fit the longer one (or both).
_SHORTER_SIDE_MODES = ("keep_ratio", "center_crop")

# Formats we agree to parse. Pillow knows many more (EPS would run Ghostscript); web images
# are these. JPEG first: it is by far the most common, and open() tries formats in order.
# MPO (phone JPEGs) opens through the JPEG plugin; AVIF only where Pillow was built with it.
_READ_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF") + (("AVIF",) if features.check_module("avif") else ())
# Signatures that make an unparseable body a broken image rather than something else.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"RIFF", "WEBP"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
# The stored extension of a body kept as it came (disable_all_reencoding).
_EXTENSION = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif",
              "AVIF": "avif"}
_PNG_DEFAULT_LEVEL = 6  # zlib's default, used when encode_quality is a jpg-style 10..100
_WHITE = (255, 255, 255)
_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Pillow's resize of a (few) times larger image first box-reduces by an integer factor; 3.0 is
# the gap its documentation calls indistinguishable from a full convolution.
_REDUCING_GAP = 3.0


@dataclass(frozen=True, kw_only=True)
class ImageOptions:
    """How bodies become stored images and what is recorded about each (img2dataset's options and
    defaults, but ``downscale_interpolation``: img2dataset's default is ``area``; ours stays the
    antialiased ``bicubic`` mmdata has always used, so earlier datasets resume unchanged)."""

    image_size: int = 256
    resize_mode: str = "border"
    encode_format: str = "jpg"
    # jpg/webp: quality 0..100. png: 0..9 is the zlib level (img2dataset's meaning); a
    # jpg-style value above 9, like the default 95, means zlib's default level.
    encode_quality: int = 95
    min_image_size: int = 0  # on the original min(width, height)
    max_aspect_ratio: float = math.inf  # on the original max side / min side
    skip_reencode: bool = False  # keep the original bytes when nothing would change them
    disable_all_reencoding: bool = False  # store every body as it came (its own format): no decode, no resize
    resize_only_if_bigger: bool = False  # an image already within image_size is kept at its size
    upscale_interpolation: str = "lanczos"
    downscale_interpolation: str = "bicubic"
    max_image_area: float = math.inf  # on the original width * height: more is filtered
    # Checked from the header before decoding. Pillow's own guard still refuses anything beyond
    # twice its global Image.MAX_IMAGE_PIXELS (~179 M), whatever this says.
    max_image_pixels: int = 89_478_485
    compute_hash: str | None = "sha256"  # which hash of the downloaded body to store (its column's name)
    extract_exif: bool = True  # img2dataset's exif column

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")
        if self.encode_format not in ENCODE_FORMATS:
            raise ValueError(f"encode_format must be one of {', '.join(ENCODE_FORMATS)}, got {self.encode_format!r}")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        if not 0 <= self.encode_quality <= 100:
            raise ValueError(f"encode_quality must be within 0..100, got {self.encode_quality!r}")
        if self.min_image_size < 0:
            raise ValueError(f"min_image_size must be >= 0, got {self.min_image_size!r}")
        if not self.max_aspect_ratio >= 1:
            raise ValueError(f"max_aspect_ratio must be >= 1 (inf for no limit), got {self.max_aspect_ratio!r}")
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be positive, got {self.max_image_pixels!r}")
        if not self.max_image_area > 0:
            raise ValueError(f"max_image_area must be positive (inf for no limit), got {self.max_image_area!r}")
        for name in ("upscale_interpolation", "downscale_interpolation"):
            value = getattr(self, name)
            if not isinstance(value, str) or value.lower() not in INTERPOLATIONS:
                raise ValueError(f"{name} must be one of {', '.join(INTERPOLATIONS)}, got {value!r}")
            object.__setattr__(self, name, value.lower())
        if self.compute_hash not in (*HASH_FIELDS, None):
            raise ValueError(f"compute_hash must be one of {', '.join(HASH_FIELDS)} or None, got {self.compute_hash!r}")


@dataclass(frozen=True)
class ImageResult(OutcomeFields):
    """What became of one body: its outcome, and on success the encoded image and its sizes."""

    outcome: Outcome
    data: bytes | None = None
    extension: str | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    exif: str | None = None


@dataclass(frozen=True)
class _OutputGeometry:
    """Where the stored image comes from, in original-image coordinates: resize the ``box`` region
    to ``resized``, then paste it at ``offset`` on an ``output``-sized white canvas (border) or use
    it as is; ``draft_size`` is the least size a reduced JPEG decode must keep: the whole image
    resized, of which a crop starts at ``crop_origin``. ``downscale`` picks the interpolation."""

    resized: tuple[int, int]
    box: tuple[float, float, float, float]
    output: tuple[int, int]
    offset: tuple[int, int] | None
    draft_size: tuple[int, int]
    downscale: bool = False
    crop_origin: tuple[int, int] | None = None


class _Refused(Exception):
    """The one failure path inside this module: becomes the ImageResult in process_image."""

    def __init__(self, status: str, error_class: str, message: str):
        super().__init__(message)
        self.outcome = Outcome(status, error_class, message)


def process_image(body: bytes, options: ImageOptions, boxes: Sequence[Box] = ()) -> ImageResult:
    """Decode ``body`` and return the image to store with ``boxes`` (fractions of the image) blurred,
    or why it is refused (never raises for a bad body: failures are results)."""
    original: tuple[int, int] | None = None
    try:
        image = _open(body)
        original = image.size
        _check_header(image, options)
        result = _stored(body, image, options, boxes)
    except _Refused as refused:
        return _failure(refused.outcome, original)
    except Image.DecompressionBombError as error:
        return _failure(Outcome(FAILED_TO_DECODE, "pixel_bomb", str(error)), original)
    except MemoryError:
        return _failure(Outcome(FAILED_TO_DECODE, "out_of_memory", "decoding ran out of memory"), original)
    except Exception as error:  # noqa: BLE001 - decoders raise many types; each is a row, not a crash
        message = f"{type(error).__name__}: {error}"
        error_class = "truncated" if "truncated" in message.lower() else "corrupt"
        return _failure(Outcome(FAILED_TO_DECODE, error_class, message), original)
    if options.extract_exif:  # outside the decode errors: a missing exifread is not a bad body
        result = dataclasses.replace(result, exif=exif_json(body, image))
    return result


def _stored(body: bytes, image: Image.Image, options: ImageOptions, boxes: Sequence[Box]) -> ImageResult:
    """The image to store: the body itself where nothing would change it, else re-encoded."""
    original = image.size
    if options.disable_all_reencoding:
        return _success(body, _EXTENSION[image.format], original, original)
    geometry = _output_geometry(original, options)
    if not boxes and _can_keep_bytes(image, geometry, options):
        _verify(image)
        return _success(body, options.encode_format, original, original)
    return _success(_transform(image, geometry, options, boxes), options.encode_format, geometry.output, original)


def _open(body: bytes) -> Image.Image:
    """Parse the header only (Pillow's open is lazy: no pixel buffer is allocated yet)."""
    try:
        return Image.open(io.BytesIO(body), formats=_READ_FORMATS)
    except Image.UnidentifiedImageError:
        start = bytes(body[:64])
        for magic, name in _MAGIC:
            if start.startswith(magic) and (name != "WEBP" or start[8:12] == b"WEBP"):
                raise _Refused(FAILED_TO_DECODE, "corrupt", f"unreadable {name} header ({len(body)} bytes)") from None
        start = start.lstrip().lower()
        looks_like_html = start.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body"))
        kind = "HTML" if looks_like_html else "unrecognised data"
        raise _Refused(FAILED_TO_DECODE, "not_an_image", f"not an image ({kind}, {len(body)} bytes)") from None


def _check_header(image: Image.Image, options: ImageOptions) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise _Refused(FAILED_TO_DECODE, "corrupt", f"image header says {width}x{height}")
    if width * height > options.max_image_pixels:
        raise _Refused(
            FAILED_TO_DECODE,
            "pixel_bomb",
            f"{width}x{height} = {width * height} pixels exceeds max_image_pixels {options.max_image_pixels}",
        )
    if min(width, height) < options.min_image_size:
        raise _Refused(
            FILTERED, "too_small", f"image too small: {width}x{height} < min_image_size {options.min_image_size}"
        )
    if width * height > options.max_image_area:
        raise _Refused(
            FILTERED,
            "too_large",
            f"image area too large: {width}x{height} = {width * height} pixels "
            f"> max_image_area {options.max_image_area}",
        )
    if max(width, height) / min(width, height) > options.max_aspect_ratio:
        raise _Refused(
            FILTERED,
            "aspect_ratio",
            f"aspect ratio too large: {width}x{height} > max_aspect_ratio {options.max_aspect_ratio}",
        )


def _output_geometry(original: tuple[int, int], options: ImageOptions) -> _OutputGeometry:
    """Output geometry as img2dataset computes it (albumentations' rounding and centring)."""
    width, height = original
    size = options.image_size
    mode = options.resize_mode
    full_box = (0.0, 0.0, float(width), float(height))
    side = min(width, height) if mode in _SHORTER_SIDE_MODES else max(width, height)
    downscale = side > size  # img2dataset's test, which picks the interpolation
    if mode == "no" or (options.resize_only_if_bigger and not downscale):
        return _OutputGeometry(original, full_box, original, None, original)
    if mode == "fixed":
        return _OutputGeometry((size, size), full_box, (size, size), None, (size, size), downscale)
    scale = size / side
    resized = (max(1, round(width * scale)), max(1, round(height * scale)))
    if mode in ("keep_ratio", "keep_ratio_largest"):
        return _OutputGeometry(resized, full_box, resized, None, resized, downscale)
    if mode == "border":
        if resized == (size, size):
            return _OutputGeometry(resized, full_box, resized, None, resized, downscale)
        offset = ((size - resized[0]) // 2, (size - resized[1]) // 2)
        return _OutputGeometry(resized, full_box, (size, size), offset, resized, downscale)
    # center_crop: crop the resized image to size x size; resample only that region.
    crop_x, crop_y = (resized[0] - size) // 2, (resized[1] - size) // 2
    to_source_x, to_source_y = width / resized[0], height / resized[1]
    box = (
        crop_x * to_source_x,
        crop_y * to_source_y,
        (crop_x + min(size, resized[0])) * to_source_x,
        (crop_y + min(size, resized[1])) * to_source_y,
    )
    output = (min(size, resized[0]), min(size, resized[1]))
    return _OutputGeometry(output, box, output, None, resized, downscale, (crop_x, crop_y))


def _can_keep_bytes(image: Image.Image, geometry: _OutputGeometry, options: ImageOptions) -> bool:
    return (
        options.skip_reencode
        and image.format == _PIL_FORMAT[options.encode_format]
        and image.mode == "RGB"
        and "transparency" not in image.info
        and geometry.output == image.size
        and geometry.resized == image.size
        and not getattr(image, "is_animated", False)
    )


def _verify(image: Image.Image) -> None:
    """Decode fully (cheaply: at 1/8 scale for JPEG) so a truncated body is not stored."""
    image.draft("RGB", (1, 1))
    image.load()


def _transform(image: Image.Image, geometry: _OutputGeometry, options: ImageOptions, boxes: Sequence[Box]) -> bytes:
    original = image.size
    full_box = (0.0, 0.0, float(original[0]), float(original[1]))
    scale = 1.0
    if geometry.resized != original:
        # Decode at the smallest DCT scale still at least the resized size (JPEG only). The
        # drafted image is ceil(size / s) pixels; its content spans exactly size / s of them.
        drafted = image.draft("RGB", geometry.draft_size)
        if drafted is not None:
            scale = drafted[1][2] / original[0]
    image = _decodable_mode(image)
    # img2dataset blurs the whole resized image, then crops: a box near the crop's edge is blurred
    # with the pixels beyond it, so then the whole image is resized and the crop taken after.
    crop_after = boxes and geometry.crop_origin is not None
    resized, region = (geometry.draft_size, full_box) if crop_after else (geometry.resized, geometry.box)
    if resized != original or region != full_box:
        filter_name = options.downscale_interpolation if geometry.downscale else options.upscale_interpolation
        resample = INTERPOLATIONS[filter_name]
        reduce = geometry.downscale and resample != Image.Resampling.NEAREST
        image = image.resize(
            resized,
            resample,
            box=tuple(coordinate * scale for coordinate in region),
            reducing_gap=_REDUCING_GAP if reduce else None,
        )
    image = _to_rgb(image)
    if boxes:
        pixels = np.asarray(image)
        blurred = blur_boxes(pixels, boxes)
        if blurred is not pixels:
            image = Image.fromarray(blurred, "RGB")
    if crop_after:
        left, top = geometry.crop_origin
        image = image.crop((left, top, left + geometry.output[0], top + geometry.output[1]))
    if geometry.offset is not None:
        canvas = Image.new("RGB", geometry.output, _WHITE)
        canvas.paste(image, geometry.offset)
        image = canvas
    return _encode(image, options)


def _decodable_mode(image: Image.Image) -> Image.Image:
    """Load and bring the pixels into a mode that resizes correctly (RGB, L, or with alpha)."""
    image.load()
    mode = image.mode
    if mode in ("RGB", "L") and "transparency" in image.info:
        return image.convert("RGBA" if mode == "RGB" else "LA")  # a PNG colour key (tRNS)
    if mode in ("RGB", "L", "RGBA", "LA"):
        return image
    if mode == "P" or mode == "PA":
        return image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode in _SIXTEEN_BIT_GREY:
        # 16-bit grey spans 0..65535; Pillow's own conversion to L clips instead of scaling.
        pixels = np.asarray(image)
        return Image.fromarray((np.clip(pixels, 0, 65535) >> 8).astype(np.uint8), "L")
    if mode in ("CMYK", "YCbCr", "RGBX", "RGBa", "La"):
        return image.convert("RGBA" if mode in ("RGBa", "La") else "RGB")
    raise _Refused(FAILED_TO_DECODE, "unsupported_mode", f"unsupported pixel mode {mode}")


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any alpha composited over white (as img2dataset does)."""
    if image.mode == "RGB":
        return image
    if image.mode == "L":
        return image.convert("RGB")
    canvas = Image.new("RGB", image.size, _WHITE)
    canvas.paste(image.convert("RGB"), mask=image.getchannel("A"))
    return canvas


def _encode(image: Image.Image, options: ImageOptions) -> bytes:
    buffer = io.BytesIO()
    if options.encode_format == "png":
        level = options.encode_quality if options.encode_quality <= 9 else _PNG_DEFAULT_LEVEL
        image.save(buffer, "PNG", compress_level=level)
    else:
        image.save(buffer, _PIL_FORMAT[options.encode_format], quality=options.encode_quality)
    return buffer.getvalue()


def _success(data: bytes, extension: str, size: tuple[int, int], original: tuple[int, int]) -> ImageResult:
    return ImageResult(
        OK,
        data=data,
        extension=extension,
        width=size[0],
        height=size[1],
        original_width=original[0],
        original_height=original[1],
    )


def _failure(outcome: Outcome, original: tuple[int, int] | None) -> ImageResult:
    return ImageResult(
        outcome,
        original_width=original[0] if original else None,
        original_height=original[1] if original else None,
    )
