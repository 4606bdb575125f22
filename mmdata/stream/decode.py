"""Image bytes into what a training step takes: an RGB PIL image (``decode="pil"``) or a uint8
``[3, H, W]`` tensor (``decode="tensor"``).

Pillow decodes by default, so the pixels are those of ``Image.open(...).convert("RGB")``.
``jpeg_decoder="simplejpeg"`` hands YCbCr and grayscale JPEGs to libjpeg-turbo through simplejpeg
instead: no Python-level marker parsing, and a tensor is the decoded array itself rather than a copy
out of Pillow. Any other image (CMYK JPEGs, PNG, WebP, ...) and any JPEG simplejpeg refuses goes to
Pillow, so an image decodes, or fails, as it would with Pillow alone.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image

DECODES = ("pil", "tensor", None)
JPEG_DECODERS = ("pillow", "simplejpeg")
_JPEG_START = b"\xff\xd8\xff"
_SIMPLEJPEG_COLORSPACES = ("YCbCr", "Gray")  # those whose RGB pixels match Pillow's (tests/stream/test_decode.py)


def check_jpeg_decoder(jpeg_decoder: str) -> None:
    """Refuse an unknown decoder, or simplejpeg when it is not installed, with what to do."""
    if jpeg_decoder not in JPEG_DECODERS:
        raise ValueError(f"jpeg_decoder must be one of {JPEG_DECODERS}, not {jpeg_decoder!r}")
    if jpeg_decoder == "simplejpeg":
        try:
            import simplejpeg  # noqa: F401
        except ImportError as error:
            message = "jpeg_decoder='simplejpeg' needs the simplejpeg package: pip install simplejpeg"
            raise ValueError(message) from error


def decode_image(data: bytes, decode: str, jpeg_decoder: str = "pillow") -> Any:
    """``data`` as ``decode`` asks ("pil" or "tensor"); errors are the decoder's own."""
    if jpeg_decoder == "simplejpeg":
        pixels = simplejpeg_rgb(data)
        if pixels is not None:
            if decode == "tensor":
                return torch.from_numpy(pixels).permute(2, 0, 1)
            return Image.frombuffer("RGB", (pixels.shape[1], pixels.shape[0]), pixels, "raw", "RGB", 0, 1)
    image = decode_pil(data)
    return pil_to_tensor(image) if decode == "tensor" else image


def decode_pil(data: bytes) -> Image.Image:
    """An RGB PIL image, fully decoded (as webdataset's ``"pil"``, without its extra copies)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


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
        if simplejpeg.decode_jpeg_header(data)[2] not in _SIMPLEJPEG_COLORSPACES:
            return None
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        return None
