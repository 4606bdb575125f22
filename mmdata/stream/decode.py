"""Image bytes into what a training step takes: an RGB PIL image (``decode="pil"``) or a uint8
``[3, H, W]`` tensor (``decode="tensor"``).

``jpeg_decoder="auto"`` (the default) takes the faster decoder for each output (bench/stream.py):
Pillow for PIL images, simplejpeg for tensors; ``"pillow"`` or ``"simplejpeg"`` forces one.

Pillow: the pixels of ``Image.open(...).convert("RGB")``. A plain grey or colour JPEG (8-bit, one or
three components, no EXIF or ICC profile to keep, within ``Image.MAX_IMAGE_PIXELS``) skips
``Image.open``'s Python marker parsing: its frame header is read here and the bytes go straight to
Pillow's own JPEG decoder with the arguments ``Image.open`` would give it, so the pixels are the same by
construction (the image's ``info`` is empty). Anything else, and any JPEG that decoder refuses, goes
through ``Image.open``, which decodes it or names the problem.

simplejpeg: YCbCr and grey JPEGs go to libjpeg-turbo through simplejpeg, with no Python-level marker
parsing, and a tensor is the decoded array itself rather than a copy out of Pillow; its pixels are
Pillow's within one level per channel (its own libjpeg-turbo build; equal on every kind the tests try).
Any other image (CMYK JPEGs, PNG, WebP, ...) and any JPEG simplejpeg refuses goes to Pillow, so an image
decodes, or fails, as it would with Pillow alone.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image

DECODES = ("pil", "tensor", None)
JPEG_DECODERS = ("auto", "pillow", "simplejpeg")
_JPEG_START = b"\xff\xd8\xff"
_SIMPLEJPEG_COLORSPACES = ("YCbCr", "Gray")  # those whose RGB pixels match Pillow's (tests/stream/test_decode.py)


def check_jpeg_decoder(jpeg_decoder: str) -> None:
    """Refuse an unknown decoder, or simplejpeg when it is not installed, with what to do."""
    if jpeg_decoder not in JPEG_DECODERS:
        raise ValueError(f"jpeg_decoder must be one of {JPEG_DECODERS}, not {jpeg_decoder!r}")
    if jpeg_decoder in ("auto", "simplejpeg"):
        try:
            import simplejpeg  # noqa: F401
        except ImportError as error:
            message = f"jpeg_decoder={jpeg_decoder!r} needs the simplejpeg package: pip install simplejpeg"
            raise ValueError(message) from error


def decode_image(data: bytes, decode: str, jpeg_decoder: str = "auto") -> Any:
    """``data`` as ``decode`` asks ("pil" or "tensor"); errors are the decoder's own. ``"auto"`` takes the
    faster decoder for the output (bench/stream.py): simplejpeg for tensors, Pillow for PIL images."""
    if jpeg_decoder == "simplejpeg" or (jpeg_decoder == "auto" and decode == "tensor"):
        pixels = simplejpeg_rgb(data)
        if pixels is not None:
            if decode == "tensor":
                return torch.from_numpy(pixels).permute(2, 0, 1)
            return Image.frombuffer("RGB", (pixels.shape[1], pixels.shape[0]), pixels, "raw", "RGB", 0, 1)
    image = decode_pil(data)
    return pil_to_tensor(image) if decode == "tensor" else image


def decode_pil(data: bytes) -> Image.Image:
    """An RGB PIL image, fully decoded (as webdataset's ``"pil"``, without its extra copies)."""
    image = _pillow_jpeg(data)
    if image is None:
        image = Image.open(io.BytesIO(data))
        image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def _pillow_jpeg(data: bytes) -> Image.Image | None:
    """A plain JPEG decoded by Pillow's JPEG decoder without ``Image.open``; ``None`` for anything else."""
    frame = plain_jpeg_frame(data)
    if frame is None:
        return None
    width, height, components = frame
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        return None  # Image.open warns or refuses, as it always did
    mode = "L" if components == 1 else "RGB"
    try:
        return Image.frombytes(mode, (width, height), data, "jpeg", mode, "")
    except (OSError, ValueError):
        return None


_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-15 (not DHT, JPG, DAC)
_METADATA_MARKERS = (0xE1, 0xE2)  # APP1 (EXIF, XMP), APP2 (ICC profile): Image.open keeps them in ``info``


def plain_jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of an 8-bit JPEG with one or three components whose markers before
    the frame header carry no metadata Pillow would keep; ``None`` for anything else."""
    if data[:3] != _JPEG_START:
        return None
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _METADATA_MARKERS or marker == 0xDA or 0xD0 <= marker <= 0xD9:
            return None
        if marker in _FRAME_MARKERS:
            if position + 10 > end:
                return None
            precision, components = data[position + 4], data[position + 9]
            height = (data[position + 5] << 8) | data[position + 6]
            width = (data[position + 7] << 8) | data[position + 8]
            if precision != 8 or components not in (1, 3) or not width or not height:
                return None
            return width, height, components
        position += 2 + ((data[position + 2] << 8) | data[position + 3])
    return None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """``[3, H, W]`` uint8, channels last in memory (as torchvision's ``pil_to_tensor``)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def simplejpeg_rgb(data: bytes) -> np.ndarray | None:
    """``[H, W, 3]`` RGB of a YCbCr or grayscale JPEG decoded by simplejpeg; ``None`` for anything
    else, and for a JPEG that simplejpeg refuses (Pillow then decides, and names the problem)."""
    if data[:3] != _JPEG_START:
        return None
    import simplejpeg

    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in _SIMPLEJPEG_COLORSPACES:
            return None
        if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
            return None  # Pillow warns or refuses, as without simplejpeg
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        return None
