"""Which tar member of a sample is what: the one rule every reader and writer of shards follows.

A WebDataset sample is the tar members sharing a key (``00000042.jpg``, ``00000042.txt``,
``00000042.json``). Extensions are compared in lower case. The image is the first member whose
extension is in :data:`IMAGE_EXTENSIONS`, in that order: every extension img2dataset or webdataset
writes for an image (AVIF where the installed Pillow decodes it; elsewhere its samples fail to
decode with a per-sample error, never "no image").
"""

from __future__ import annotations

from typing import Mapping

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "avif")
CAPTION_EXTENSION = "txt"
METADATA_EXTENSION = "json"


def image_member(members: Mapping[str, bytes]) -> bytes | None:
    """The sample's image bytes, or None when it has no image member."""
    extension = image_extension(members)
    return None if extension is None else members[extension]


def image_extension(members: Mapping[str, bytes]) -> str | None:
    """The member name (as stored) holding the sample's image, or None."""
    by_lower = {name.lower(): name for name in members}
    for extension in IMAGE_EXTENSIONS:
        if extension in by_lower:
            return by_lower[extension]
    return None


def caption_member(members: Mapping[str, bytes]) -> bytes | None:
    """The caption's UTF-8 bytes, or None."""
    return _member(members, CAPTION_EXTENSION)


def metadata_member(members: Mapping[str, bytes]) -> bytes | None:
    """The metadata JSON's bytes, or None."""
    return _member(members, METADATA_EXTENSION)


def _member(members: Mapping[str, bytes], extension: str) -> bytes | None:
    if extension in members:
        return members[extension]
    for name, value in members.items():
        if name.lower() == extension:
            return value
    return None
