"""WebDataset tar shards: an atomic writer that records each sample's byte range, and a reader that
refuses hostile members instead of trusting them. :func:`check_member` is the one statement of what a
safe reader accepts; every reader of tar bytes (here, the loader's fast path, the member index) calls it."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from mmdata.storage import Location, location

# Members that would be unpickled (or executed) by naive loaders; never handed to callers.
UNSAFE_EXTENSIONS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "npy", "npz", "mp"})
MAX_MEMBER_BYTES = 64 * 1024 * 1024
TAR_END = b"\0" * 2 * tarfile.BLOCKSIZE  # closes a byte range cut out of a tar, so it parses as one


class ShardFormatError(ValueError):
    """A shard holds something a safe reader refuses (link, device, path escape, oversize member)."""


@dataclass(frozen=True)
class SampleSpan:
    """Where one sample's members lie in its tar: ``offset`` of the first header, ``size`` to the end."""

    offset: int
    size: int


class ShardWriter:
    """Writes ``{key}.{ext}`` members to a local staging file; :meth:`finish` closes and fsyncs it for
    the commit protocol (:mod:`mmdata.storage.commit`) to publish.

    Members carry fixed owner and time so that the same samples give the same bytes.
    """

    def __init__(self, staging: str | os.PathLike):
        self._temp = Path(staging)
        self._temp.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._temp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, key: str, members: dict[str, bytes]) -> SampleSpan:
        start = self._file.tell()
        for extension, payload in members.items():
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size = len(payload)
            info.mode = 0o444
            info.mtime = 0
            self._tar.addfile(info, io.BytesIO(payload))
        return SampleSpan(start, self._file.tell() - start)

    def finish(self) -> Path:
        """Close the tar and make it durable; returns the staging file."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._temp

    def abort(self) -> None:
        """Remove the temporary tar, even when closing it fails (a full disk fails the final flush)."""
        try:
            with contextlib.suppress(OSError):
                self._tar.close()
            with contextlib.suppress(OSError):
                self._file.close()
        finally:
            self._temp.unlink(missing_ok=True)


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/000012.jpg"`` → ``("dir/000012", "jpg")``: the key ends at the basename's first dot."""
    head, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem:
        raise ShardFormatError(f"member {name!r} has no key.extension form")
    return (f"{head}/{stem}" if head else stem), extension


def check_member(
    name: str, size: int, *, regular: bool = True, max_member_bytes: int = MAX_MEMBER_BYTES
) -> tuple[str, str]:
    """``(key, extension)`` of a member a safe reader may read, else :class:`ShardFormatError`: links
    and devices (``regular=False``), absolute, ``..`` or backslash names, members over ``max_member_bytes``
    and names without a ``key.extension`` form are refused."""
    if not regular:
        raise ShardFormatError(f"member {name!r} is not a regular file (link or device)")
    if name.startswith("/") or ".." in name.split("/") or "\\" in name:
        raise ShardFormatError(f"member {name!r} escapes the archive")
    if size > max_member_bytes:
        raise ShardFormatError(f"member {name!r} declares {size} bytes, over the {max_member_bytes} limit")
    return split_member_name(name)


def is_pickle_like(extension: str) -> bool:
    """Whether a member (``"pth"``, ``"x.pickle"``) is one that naive loaders would unpickle."""
    return extension.rsplit(".", 1)[-1].lower() in UNSAFE_EXTENSIONS


def iter_samples(
    source: str | os.PathLike | Location | BinaryIO,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    skip_unsafe: bool = True,
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` per sample, in tar order.

    A member :func:`check_member` refuses raises :class:`ShardFormatError`; pickle-like members are
    dropped (``skip_unsafe``) or refused.
    """
    with _open_tar(source) as archive:
        current_key, members = None, {}
        for info in archive:
            if info.isdir():
                continue
            key, extension = check_member(info.name, info.size, regular=info.isreg(), max_member_bytes=max_member_bytes)
            if is_pickle_like(extension):
                if skip_unsafe:
                    continue
                raise ShardFormatError(f"member {info.name!r} is a pickle-like format and is refused")
            if key != current_key:
                if current_key is not None:
                    yield current_key, members
                current_key, members = key, {}
            handle = archive.extractfile(info)
            members[extension] = handle.read() if handle is not None else b""
        if current_key is not None:
            yield current_key, members


def read_sample(source: BinaryIO, span: SampleSpan, **limits) -> tuple[str, dict[str, bytes]]:
    """Read the one sample stored at ``span`` (from a member index) without scanning the tar."""
    source.seek(span.offset)
    blob = source.read(span.size)
    if len(blob) != span.size:
        raise ShardFormatError(f"short read at offset {span.offset}: {len(blob)} of {span.size} bytes")
    samples = samples_in_range(blob, **limits)
    if len(samples) != 1:
        raise ShardFormatError(f"byte range at offset {span.offset} holds {len(samples)} samples, not 1")
    return samples[0]


def samples_in_range(blob: bytes, **limits) -> list[tuple[str, dict[str, bytes]]]:
    """The samples of a byte range cut out of a tar (whole members, from a member index)."""
    return list(iter_samples(io.BytesIO(blob + TAR_END), **limits))


@contextlib.contextmanager
def _open_tar(source: str | os.PathLike | Location | BinaryIO) -> Iterator[tarfile.TarFile]:
    # Stream mode: no seeking, members read in order, nothing extracted to disk.
    if isinstance(source, (str, os.PathLike, Location)):
        with location(source).open("rb") as handle, tarfile.open(fileobj=handle, mode="r|") as archive:
            yield archive
        return
    with tarfile.open(fileobj=source, mode="r|") as archive:
        yield archive
