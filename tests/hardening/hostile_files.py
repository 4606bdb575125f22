"""Hostile dataset files for the hardening tests: tars with escaping names, links, devices, huge
declared members and pickle members, gzip bombs posing as tars, and a dataset folder around them
whose metadata indexes each sample's byte range (so the stream loader reads them by range)."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import tarfile
import zlib
from pathlib import Path

from PIL import Image

from mmdata import layout
from mmdata.atomic import write_json, write_parquet
from mmdata.schemas.samples import SAMPLE_SCHEMA


class Detonator:
    """Unpickling this creates ``path`` (a folder): proof that something was unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def jpeg(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (40 * index % 256, 90, 160)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def regular(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(payload), 0o644, 0
    return info, payload


def special(name: str, kind: bytes, linkname: str = "", size: int = 0) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mtime = kind, linkname, size, 0
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    return info, None


def hostile_members(kind: str, key: str, target: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The members of one hostile sample ``key``; ``target`` is a path outside the dataset that an
    extracting reader would write or point to."""
    good = [regular(f"{key}.jpg", jpeg(7)), regular(f"{key}.txt", b"hostile sample")]
    if kind == "dotdot":
        return [regular(f"{key}.txt", b"x"), regular(f"../../{target.name}/{key}.jpg", jpeg(1))]
    if kind == "absolute":
        return [regular(f"{key}.txt", b"x"), regular(f"{target}/{key}.jpg", jpeg(1))]
    if kind == "symlink":
        return [regular(f"{key}.txt", b"x"), special(f"{key}.jpg", tarfile.SYMTYPE, linkname=str(target))]
    if kind == "hardlink":
        return [regular(f"{key}.txt", b"x"), special(f"{key}.jpg", tarfile.LNKTYPE, linkname=str(target))]
    if kind == "device":
        return [regular(f"{key}.txt", b"x"), special(f"{key}.jpg", tarfile.CHRTYPE)]
    if kind == "fifo":
        return [regular(f"{key}.txt", b"x"), special(f"{key}.jpg", tarfile.FIFOTYPE)]
    if kind == "huge":  # the header declares 1 TB; only the header is there
        return [regular(f"{key}.txt", b"x"), special(f"{key}.jpg", tarfile.REGTYPE, size=10**12)]
    if kind == "pickle":  # a usable sample carrying members a naive loader would unpickle
        payload = pickle.dumps(Detonator(target))
        return good + [regular(f"{key}.{extension}", payload) for extension in ("pyd", "pickle", "pth")]
    raise ValueError(kind)


HOSTILE_KINDS = ("dotdot", "absolute", "symlink", "hardlink", "device", "fifo", "huge", "pickle")
REFUSED_KINDS = tuple(kind for kind in HOSTILE_KINDS if kind != "pickle")


def write_tar(
    path: Path, samples: list[tuple[str, list[tuple[tarfile.TarInfo, bytes | None]]]]
) -> dict[str, tuple[int, int]]:
    """Write the samples' members in order; returns each key's (offset, size) byte range."""
    spans = {}
    with open(path, "wb") as handle, tarfile.open(fileobj=handle, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for key, members in samples:
            start = handle.tell()
            for info, payload in members:
                if info.type == tarfile.REGTYPE and payload is None:
                    archive.fileobj.write(info.tobuf(archive.format, archive.encoding, archive.errors))
                    archive.offset += tarfile.BLOCKSIZE
                else:
                    archive.addfile(info, io.BytesIO(payload) if payload is not None else None)
            spans[key] = (start, archive.offset - start)
    return spans


def write_shard(root: Path, shard: int, samples, *, shard_size: int = 10) -> list[str]:
    """A complete shard (tar, parquet with byte ranges, stats) holding ``samples``; returns its keys."""
    root.mkdir(parents=True, exist_ok=True)
    spans = write_tar(layout.tar_path(root, shard), samples)
    rows = []
    for key, _ in samples:
        url = f"http://example.invalid/{key}.jpg"
        offset, size = spans[key]
        rows.append({"key": key, "uid": layout.sample_uid(url, "c"), "url": url, "caption": f"caption {key}",
                     "status": "success", "tar_offset": offset, "tar_size": size, "width": 16, "height": 16})
    import pyarrow as pa

    write_parquet(pa.Table.from_pylist(rows), layout.parquet_path(root, shard), SAMPLE_SCHEMA, keep_extra=True)
    write_json(
        layout.stats_path(root, shard), {"shard": layout.shard_name(shard), "count": len(rows), "successes": len(rows)}
    )
    return [key for key, _ in samples]


def good_sample(key: str, index: int):
    return key, [regular(f"{key}.jpg", jpeg(index)), regular(f"{key}.txt", f"caption {key}".encode()),
                 regular(f"{key}.json", json.dumps({"key": key}).encode())]


def hostile_dataset(root: Path, target: Path) -> dict[str, str]:
    """Shard 0: clean. Shard i (1..): two clean samples around one hostile sample of kind
    HOSTILE_KINDS[i-1]. Returns {hostile key: kind}."""
    write_shard(root, 0, [good_sample(layout.sample_key(0, row, 10), row) for row in range(3)])
    hostile = {}
    for shard, kind in enumerate(HOSTILE_KINDS, start=1):
        key = layout.sample_key(shard, 1, 10)
        samples = [good_sample(layout.sample_key(shard, 0, 10), 0), (key, hostile_members(kind, key, target)),
                   good_sample(layout.sample_key(shard, 2, 10), 2)]
        write_shard(root, shard, samples)
        hostile[key] = kind
    return hostile


def gzip_bomb(path: Path, mib: int) -> Path:
    """A gzip stream of ``mib`` MiB of zeros (about 1 KiB per MiB on disk)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    with open(path, "wb") as handle:
        for _ in range(mib):
            handle.write(compressor.compress(zeros))
        handle.write(compressor.flush())
    return path


def gzipped_tar_bomb(path: Path, mib: int) -> Path:
    """A real ``.tar.gz`` whose one member declares and holds ``mib`` MiB of zeros."""
    with gzip.open(path, "wb", compresslevel=6) as handle, tarfile.open(fileobj=handle, mode="w|") as archive:
        info = tarfile.TarInfo("00000000.jpg")
        info.size = mib << 20
        archive.addfile(info, _Zeros(info.size))
    return path


class _Zeros(io.RawIOBase):
    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count
