"""Cheap, model-free image-quality annotations of one shard (the kind NeMo Curator and DataComp use
as heuristics), each a column ``--where`` and the report can use.

* ``laplacian_variance``: the variance of the 4-neighbour Laplacian (``[[0,1,0],[1,-4,1],[0,1,0]]``,
  interior pixels) of the stored image in grey (0-255), taken at a fixed working size: resized, aspect
  kept, so that its shorter side is :data:`WORK_SIDE` pixels (area-averaged when shrinking, bilinear
  when enlarging). Low values mean few sharp edges: blurry, flat or upscaled pictures. Because the
  size is fixed, a picture and a resized copy get about the same number, and a small image enlarged
  to the working size scores as blurry as it would look at training resolution. A picture longer than
  :data:`MAX_ASPECT` to one is measured on its central part of that aspect. A large JPEG is decoded
  at a reduced DCT scale (Pillow's ``draft``) that keeps at least twice the working size, 4x faster
  on a 1.7-megapixel photo; the area-averaging step after it keeps the number within ~15% of a full
  decode's (drafting down to the working size itself would move it by up to 2x).
* ``caption_chars_per_100px``: caption characters (code points, as Python's ``len``) per 100 pixels of
  the image's shorter side before the download resized it (``original_width``/``original_height``;
  the stored ``width``/``height`` where the original is not recorded). A paragraph under a thumbnail
  scores high, a one-word caption on a large photo low. Null without a caption or a size.
"""

from __future__ import annotations

import io
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from mmdata.schemas.annotations import IMAGE_QUALITY_SCHEMA
from mmdata.schemas.samples import SUCCESS

WORK_SIDE = 256  # pixels of the shorter side the Laplacian is taken at
MAX_ASPECT = 8.0  # longer/shorter side measured at most; a longer picture is measured on its centre


def laplacian_variance(blob: bytes) -> float:
    """The blur measure of one encoded image; raises what Pillow raises on undecodable bytes."""
    with Image.open(io.BytesIO(blob)) as opened:
        opened.draft("L", (2 * WORK_SIDE, 2 * WORK_SIDE))  # JPEG only: a reduced decode no smaller than asked
        grey = opened.convert("L")
    box = _central_box(grey.width, grey.height)
    width, height = box[2] - box[0], box[3] - box[1]
    scale = WORK_SIDE / min(width, height)
    size = (max(3, round(width * scale)), max(3, round(height * scale)))
    pixels = np.asarray(grey.resize(size, Image.BILINEAR, box=box), dtype=np.float32)
    centre = pixels[1:-1, 1:-1]
    laplacian = pixels[:-2, 1:-1] + pixels[2:, 1:-1] + pixels[1:-1, :-2] + pixels[1:-1, 2:] - 4.0 * centre
    return float(laplacian.var(dtype=np.float64))


def _central_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The whole image, or its central part of aspect ratio :data:`MAX_ASPECT` when it is longer."""
    if width > MAX_ASPECT * height:
        kept = MAX_ASPECT * height
        return ((width - kept) / 2, 0.0, (width + kept) / 2, float(height))
    if height > MAX_ASPECT * width:
        kept = MAX_ASPECT * width
        return (0.0, (height - kept) / 2, float(width), (height + kept) / 2)
    return (0.0, 0.0, float(width), float(height))


def caption_chars_per_100px(metadata: pa.Table) -> pa.Array:
    """``len(caption) / (shorter side / 100)`` per row of a metadata table (see the module docstring)."""
    original = pc.min_element_wise(
        _column(metadata, "original_width", pa.float64()), _column(metadata, "original_height", pa.float64()),
        skip_nulls=False,
    )
    stored = pc.min_element_wise(
        _column(metadata, "width", pa.float64()), _column(metadata, "height", pa.float64()), skip_nulls=False
    )
    side = pc.coalesce(original, stored).to_numpy(zero_copy_only=False)
    captions = _column(metadata, "caption", pa.string())
    characters = pc.utf8_length(captions).cast(pa.float64()).to_numpy(zero_copy_only=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = characters / (side / 100.0)
    return pa.array(ratio, pa.float32(), mask=~np.isfinite(ratio) | ~(side > 0))


def _column(metadata: pa.Table, name: str, value_type: pa.DataType) -> pa.Array:
    """A metadata column cast to ``value_type``, or nulls where the table lacks it (img2dataset's output)."""
    if name in metadata.column_names:
        return metadata.column(name).combine_chunks().cast(value_type)
    return pa.nulls(metadata.num_rows, value_type)


def image_quality_table(metadata: pa.Table, images: Iterable[tuple[str, bytes | None]]) -> pa.Table:
    """IMAGE_QUALITY_SCHEMA rows for every row of one shard's ``metadata``.

    ``images`` yields ``(key, image bytes or None)`` per stored sample (a shard's tar, in order). A
    successful row whose image is missing or undecodable gets ``image_quality_error``; failed downloads
    have no image, so their image columns are null without an error.
    """
    keys = metadata.column("key").to_pylist()
    wanted = {key for key, status in zip(keys, metadata.column("status").to_pylist()) if status == SUCCESS}
    measured: dict[str, tuple[float | None, str | None]] = {}
    for key, blob in images:
        if key not in wanted:
            continue
        if blob is None:
            measured[key] = (None, "no image member")
            continue
        try:
            measured[key] = (laplacian_variance(blob), None)
        except Exception as error:  # any decoder failure is a per-sample row, not a crash
            measured[key] = (None, f"{type(error).__name__}: {error}")
    missing = (None, "no sample in the shard's tar")
    values = [measured.get(key, missing) if key in wanted else (None, None) for key in keys]
    return pa.table(
        {
            "key": metadata.column("key"),
            "laplacian_variance": pa.array([value for value, _ in values], pa.float32()),
            "caption_chars_per_100px": caption_chars_per_100px(metadata),
            "image_quality_error": pa.array([error for _, error in values], pa.string()),
        },
        schema=IMAGE_QUALITY_SCHEMA,
    )
