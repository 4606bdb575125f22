"""The member index: each stored sample's byte range in its tar, so a loader reads one sample (or a
run of adjacent ones) with one ranged read.

Shards written by mmdata carry the index in their metadata (``tar_offset``/``tar_size``). For tars
without it (img2dataset output, hand-made shards) the index is built by scanning the tar's headers
once and cached under ``$MMDATA_CACHE`` (default ``~/.cache/mmdata``), keyed by the tar's identity.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmdata.atomic import write_parquet
from mmdata.schemas.member_index import MEMBER_SCHEMA
from mmdata.schemas.samples import SUCCESS
from mmdata.shards import ShardFormatError, check_member
from mmdata.stream.source import Source

BLOCK = tarfile.BLOCKSIZE


def scan_members(tar_bytes: bytes | io.BufferedIOBase) -> pa.Table:
    """Byte ranges of the samples in a tar, found by reading its headers in order. A member the safe
    reader would refuse (:func:`mmdata.shards.check_member`) refuses the whole tar: it is hostile."""
    fileobj = io.BytesIO(tar_bytes) if isinstance(tar_bytes, (bytes, bytearray)) else tar_bytes
    keys, offsets, ends = [], [], []
    with tarfile.open(fileobj=fileobj, mode="r|") as archive:
        for info in archive:
            if info.isdir():
                continue
            key, _ = check_member(info.name, info.size, regular=info.isreg())
            end = info.offset_data + -(-info.size // BLOCK) * BLOCK
            if keys and keys[-1] == key:
                ends[-1] = end
            else:
                keys.append(key)
                offsets.append(info.offset)
                ends.append(end)
    sizes = [end - start for start, end in zip(offsets, ends)]
    return pa.table({"key": keys, "tar_offset": offsets, "tar_size": sizes}, schema=MEMBER_SCHEMA)


def cache_dir() -> Path:
    return Path(os.environ.get("MMDATA_CACHE", Path.home() / ".cache" / "mmdata")) / "member-index"


def shard_members(source: Source, shard: str, metadata: pa.Table | None) -> pa.Table:
    """``key, tar_offset, tar_size`` of a shard's stored samples, in tar order.

    Taken from the shard's metadata rows when they carry offsets, else from a scan of the tar
    (cached).
    """
    if metadata is not None and "tar_offset" in metadata.column_names:
        stored = metadata
        if "status" in metadata.column_names:
            stored = metadata.filter(pc.equal(metadata.column("status"), SUCCESS))
        if stored.num_rows == 0 or stored.column("tar_offset").null_count == 0:
            members = stored.select(["key", "tar_offset", "tar_size"]).cast(MEMBER_SCHEMA)
            return members.sort_by("tar_offset")
    return _scanned_members(source, shard)


def _scanned_members(source: Source, shard: str) -> pa.Table:
    name = f"{shard}.tar"
    token = hashlib.blake2b(source.cache_token(name).encode(), digest_size=16).hexdigest()
    cached = cache_dir() / f"{token}.parquet"
    if cached.exists():
        return pq.ParquetFile(cached).read(columns=MEMBER_SCHEMA.names).cast(MEMBER_SCHEMA)
    try:
        members = scan_members(source.read_file(name))
    except (ShardFormatError, tarfile.TarError) as error:
        raise ShardFormatError(f"{source.location}/{name}: cannot index its samples: {error}") from error
    write_parquet(members, cached, MEMBER_SCHEMA)
    return members
