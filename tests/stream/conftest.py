"""Tiny datasets for the loader tests, written with the real shard writer (no download)."""

import io

import pytest
from PIL import Image

from mmdata import layout
from mmdata.shard_output import shard_output

COLOURS = [(200, 30, 30), (30, 160, 40), (30, 60, 210), (230, 210, 30)]


def tiny_jpeg(index: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[index % len(COLOURS)]).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_dataset(
    root, shard_sizes, *, failures_every: int = 0, image_size: int = 8, extra=None, image=None
) -> list[str]:
    """Shards of ``shard_sizes`` rows; every ``failures_every``-th row is a failed download (no
    members). ``image(counter)`` gives a row's ``{extension: bytes}`` image member (default: a JPEG).
    Returns the stored keys in shard and row order."""
    stored = []
    shard_size = max(max(shard_sizes), 2)
    counter = 0
    for shard, rows in enumerate(shard_sizes):
        with shard_output(root, shard) as output:
            for row in range(rows):
                key = layout.sample_key(shard, row, shard_size)
                record = {"key": key, "uid": f"u{key}", "caption": f"caption {key}", "quality": float(counter % 7)}
                if extra:
                    record.update(extra(key))
                if failures_every and counter % failures_every == failures_every - 1:
                    output.add({**record, "status": "failed_to_download", "error_message": "404"})
                else:
                    picture = image(counter) if image else {"jpg": tiny_jpeg(counter, image_size)}
                    members = {**picture, "txt": f"caption {key}".encode(), "json": b"{}"}
                    output.add({**record, "status": "success"}, members)
                    stored.append(key)
                counter += 1
            output.commit({"count": rows, "shard": layout.shard_name(shard)})
    return stored


@pytest.fixture
def dataset_factory(tmp_path):
    def build(shard_sizes, **options):
        root = tmp_path / f"data{len(list(tmp_path.iterdir()))}"
        keys = make_dataset(root, shard_sizes, **options)
        return root, keys

    return build
