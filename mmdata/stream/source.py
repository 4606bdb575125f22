"""Where a dataset's files are read from: a local folder, an http(s) URL (ranged GETs against any
static file server) or any fsspec URL (through :class:`mmdata.storage.Location`). A source reads
whole small files, byte ranges of tars, and parquet files by their footer, column chunks or row
groups (never whole, so a view or a shard's metadata costs only the columns read).

Each process that reads opens its own handles and connections (a DataLoader worker never reuses its
parent's), so a source pickles as its location only (an fsspec one with its filesystem's options).
"""

from __future__ import annotations

import http.client
import io
import os
import re
import threading
import urllib.parse
from pathlib import Path

import pyarrow.parquet as pq

from mmdata import layout
from mmdata.storage import Location

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
PARQUET_READ_BUFFER = 1 << 16  # bytes fetched at once when a parquet file is read through ranges


class SourceError(OSError):
    """A file could not be read from the dataset's location (missing, short, no range support)."""


class RangeNotSupported(SourceError):
    """The server ignores ``Range``: a setup problem, never skipped as a bad sample."""


class Source:
    """Reads files relative to a dataset root."""

    location: str
    dataset: Location | None = None  # the root, where the rest of mmdata can read it (not over http)
    read_threads = 1  # range reads in flight at once (1: one background reader, as for a local disk)
    coalesce_gap = 0  # unselected bytes between two samples that one range read may span

    def read_file(self, name: str) -> bytes:
        raise NotImplementedError

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def parquet(self, name: str) -> pq.ParquetFile:
        """A parquet file opened for reading some of its columns or row groups (ranged reads)."""
        return pq.ParquetFile(io.BufferedReader(RangedFile(self, name), PARQUET_READ_BUFFER))

    def parquet_metadata(self, name: str) -> pq.FileMetaData:
        """A parquet file's footer only: its row counts, schema and column statistics."""
        with self.parquet(name) as parquet:
            return parquet.metadata

    def shards(self) -> list[str] | None:
        """Complete shards in shard order, or ``None`` where the root cannot be listed."""
        return None

    def cache_token(self, name: str) -> str:
        """A string that changes when the file changes (for caches of derived data)."""
        return self.location + "/" + name

    def close(self) -> None:
        pass

    def __getstate__(self) -> dict:
        return {"location": self.location}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["location"])


class LocalSource(Source):
    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        self.root = Path(location)
        self.dataset = layout.dataset(self.root)
        self._handles: dict[str, int] = {}
        self._pid = os.getpid()

    def read_file(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError as error:
            raise SourceError(f"{self.root / name} does not exist") from error

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()  # a forked worker opens its own
        handle = self._handles.get(name)
        if handle is None:
            if len(self._handles) >= 8:
                self.close()
            handle = self._handles[name] = os.open(self.root / name, os.O_RDONLY)
        return os.pread(handle, size, offset)

    def parquet(self, name: str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.root / name)
        except FileNotFoundError as error:
            raise SourceError(f"{self.root / name} does not exist") from error

    def parquet_metadata(self, name: str) -> pq.FileMetaData:
        try:
            with open(self.root / name, "rb") as handle:
                return pq.read_metadata(handle)
        except FileNotFoundError as error:
            raise SourceError(f"{self.root / name} does not exist") from error

    def shards(self) -> list[str]:
        return layout.complete_shards(self.dataset)

    def cache_token(self, name: str) -> str:
        stat = (self.root / name).stat()
        return f"{(self.root / name).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"

    def close(self) -> None:
        for handle in self._handles.values():
            os.close(handle)
        self._handles.clear()


class HttpSource(Source):
    """Ranged GETs over one kept-alive connection per process and thread (a worker reads its next
    shard's metadata while its tar ranges are read); a server that ignores ``Range`` is refused
    rather than downloaded whole."""

    def __init__(self, location: str, *, timeout: float = 60.0, retries: int = 3):
        self.location = location.rstrip("/")
        parsed = urllib.parse.urlsplit(self.location)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"{location!r} is not an http(s) URL")
        self._parsed = parsed
        self._timeout = timeout
        self._retries = retries
        self._local = threading.local()  # .connection: this thread's kept-alive connection
        self._pid = os.getpid()

    def read_file(self, name: str) -> bytes:
        status, headers, body = self._get(name, None)
        if status != 200:
            raise SourceError(f"GET {self._url(name)} answered HTTP {status}")
        return body

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        if size <= 0:
            return b""
        status, headers, body = self._get(name, (offset, offset + size - 1))
        if status == 416:
            return b""  # the range starts past the end: a truncated file
        if status == 200:
            raise RangeNotSupported(
                f"GET {self._url(name)} with Range answered HTTP 200 (the whole file): the server must support "
                "Range requests (nginx, Apache, S3/GCS static hosting and most static servers do)"
            )
        if status != 206:
            raise SourceError(f"GET {self._url(name)} bytes {offset}-{offset + size - 1} answered HTTP {status}")
        match = _CONTENT_RANGE.match(headers.get("content-range", ""))
        if not match or int(match.group(1)) != offset:
            raise SourceError(f"GET {self._url(name)}: unexpected Content-Range {headers.get('content-range')!r}")
        return body

    def size(self, name: str) -> int:
        """The file's size, from the ``Content-Range`` of a one-byte range read."""
        status, headers, body = self._get(name, (0, 0))
        match = _CONTENT_RANGE.match(headers.get("content-range", ""))
        if status == 416:
            return 0  # nothing to read: an empty file
        if status == 200:
            raise RangeNotSupported(
                f"GET {self._url(name)} with Range answered HTTP 200 (the whole file): the server must support "
                "Range requests (nginx, Apache, S3/GCS static hosting and most static servers do)"
            )
        if status != 206 or not match or match.group(3) == "*":
            raise SourceError(f"GET {self._url(name)} bytes 0-0 answered HTTP {status} without the file's size")
        return int(match.group(3))

    def close(self) -> None:
        """Close the calling thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _url(self, name: str) -> str:
        return f"{self.location}/{name}"

    def _get(self, name: str, byte_range: tuple[int, int] | None) -> tuple[int, dict, bytes]:
        path = f"{self._parsed.path.rstrip('/')}/{urllib.parse.quote(name)}"
        headers = {"Accept-Encoding": "identity"}
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        last_error: Exception | None = None
        for _ in range(self._retries):
            try:
                connection = self._connect()
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                body = response.read()
                if response.will_close:
                    self.close()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, body
            except (OSError, http.client.HTTPException) as error:
                last_error = error
                self.close()
        raise SourceError(f"GET {self._url(name)} failed after {self._retries} tries: {last_error}") from last_error

    def _connect(self) -> http.client.HTTPConnection:
        if self._pid != os.getpid():
            # A forked DataLoader worker must not talk on its parent's socket: forget it, open its own.
            self._local, self._pid = threading.local(), os.getpid()
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
            connection = self._local.connection = kind(self._parsed.hostname, self._parsed.port, timeout=self._timeout)
        return connection


class StoreSource(Source):
    """Any fsspec filesystem (s3://, gs://, hf://, memory://, ...) through :class:`mmdata.storage.Location`:
    its ``storage_options`` and retries apply, and a forked DataLoader worker gets its own filesystem
    instance (never its parent's event loop or connections). Several ranges may be read at once."""

    read_threads = 8  # concurrent range reads per process: a remote view is not one round trip at a time
    coalesce_gap = 64 * 1024  # unselected bytes worth reading through rather than paying another request

    def __init__(self, root: Location):
        self.dataset = root
        self.location = root.url

    def read_file(self, name: str) -> bytes:
        try:
            return (self.dataset / name).read_bytes()
        except FileNotFoundError as error:
            raise SourceError(f"{self.location}/{name} does not exist") from error

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        if size <= 0:
            return b""
        return (self.dataset / name).read_range(offset, size)

    def parquet(self, name: str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile((self.dataset / name).open("rb"))
        except FileNotFoundError as error:
            raise SourceError(f"{self.location}/{name} does not exist") from error

    def shards(self) -> list[str]:
        return layout.complete_shards(self.dataset)

    def cache_token(self, name: str) -> str:
        info = (self.dataset / name).info()  # a replaced shard has a new ETag (or size)
        return f"{self.location}/{name}:{info['size']}:{info['etag']}"

    def __getstate__(self) -> dict:
        return {"dataset": self.dataset}  # a Location pickles with its filesystem's options

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["dataset"])


class RangedFile(io.RawIOBase):
    """A read-only, seekable file over a source's ranged reads (for parquet readers)."""

    def __init__(self, source: Source, name: str):
        self.source, self.name = source, name
        self._position = 0
        self._size: int | None = None

    def _length(self) -> int:
        if self._size is None:
            self._size = self.source.size(self.name)
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position}.get(whence)
        self._position = max(0, offset + (self._length() if base is None else base))
        return self._position

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), self._length() - self._position)
        if wanted <= 0:
            return 0
        data = self.source.read_range(self.name, self._position, wanted)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


def open_source(path: str | os.PathLike | Location, storage_options: dict | None = None) -> Source:
    """A local folder, an ``http(s)://`` URL (plain ranged GETs), or any other fsspec URL or Location."""
    text = path.url if isinstance(path, Location) else os.fspath(path)
    scheme = urllib.parse.urlsplit(text).scheme if "://" in text else ""
    if scheme in ("http", "https") and not isinstance(path, Location):
        if storage_options:
            raise ValueError(f"storage_options do not apply to {text!r}: http(s) datasets are read with plain GETs")
        return HttpSource(text)
    root = layout.dataset(path, storage_options)
    if root.is_local:
        if not root.is_dir():
            raise ValueError(f"dataset folder {root.url} does not exist")
        return LocalSource(root.local_path())
    return StoreSource(root)
