"""img2dataset's ``exif`` column: the body's EXIF tags as a JSON object, read by exifread (the
``exifread-nocycle`` 3.0 fork img2dataset pins: later exifread releases print some tags differently
and miss the EXIF of WebP files written by Pillow).

img2dataset stores ``json.dumps({name: str(tag).strip()})`` of ``exifread.process_file(body,
details=False)`` for each success: names such as ``"Image Make"`` or ``"EXIF ExposureTime"``,
values as exifread prints them (``"1/100"``, ``"Rotated 90 CW"``), ``"{}"`` for an image without
EXIF, null when the EXIF cannot be parsed. The same here, but exifread runs only on a body in
which Pillow's header parse found EXIF (a JPEG or WebP EXIF block, a TIFF's EXIF directory): the
others get ``"{}"`` at no cost. img2dataset also stores a plain TIFF's own layout tags (``"Image
ImageWidth"``, ...) as if they were EXIF; here such a TIFF gets ``"{}"``.
"""

from __future__ import annotations

import io
import json
import logging

from PIL import Image

# exifread logs a warning for every malformed or absent EXIF block; img2dataset silences it too.
logging.getLogger("exifread").setLevel(logging.CRITICAL)

_BLOCK_FORMATS = ("JPEG", "MPO", "WEBP")  # EXIF in a block Pillow finds while reading the header
_EXIF_DIRECTORY = 0x8769  # the TIFF tag pointing at the EXIF directory


def exif_json(body: bytes, image: Image.Image) -> str | None:
    """The exif column of a stored ``body`` whose header Pillow parsed as ``image``."""
    if not _has_exif(image):
        return "{}"
    try:
        import exifread  # only bodies that carry EXIF need it
    except ImportError as error:
        raise ImportError("extract_exif needs exifread (pip install 'exifread-nocycle>=3.0.1,<4'), "
                          "or pass extract_exif=False") from error
    try:
        tags = exifread.process_file(io.BytesIO(body), details=False)
        # Thumbnails (bytes) only come from later exifread releases, which extract them regardless.
        return json.dumps({name: str(tag).strip() for name, tag in tags.items()
                           if tag is not None and not isinstance(tag, bytes)})
    except Exception:  # noqa: BLE001 - a malformed EXIF block leaves the column null, as in img2dataset
        return None


def _has_exif(image: Image.Image) -> bool:
    if image.format in _BLOCK_FORMATS:
        return bool(image.info.get("exif"))
    return image.format == "TIFF" and _EXIF_DIRECTORY in image.tag_v2
