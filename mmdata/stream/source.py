"""Where a dataset's files are read from: a local folder, an http(s) URL (ranged GETs against any
static file server) or any fsspec URL (through :class:`mmdata.storage.Location`). A source reads
whole small files and byte ranges of tars.

Each process that reads opens its own handles and connections (a DataLoader worker never reuses its
parent's), so a source pickles as its location only (an fsspec one with its filesystem's options).
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.parse
from pathlib import Path

from mmdata import layout
from mmdata.storage import Location

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
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
    """Ranged GETs over one kept-alive connection per process; a server that ignores ``Range`` is
    refused rather than downloaded whole."""

    def __init__(self, location: str, *, timeout: float = 60.0, retries: int = 3):
        self.location = location.rstrip("/")
        parsed = urllib.parse.urlsplit(self.location)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"{location!r} is not an http(s) URL")
        self._parsed = parsed
        self._timeout = timeout
        self._retries = retries
        self._connection: http.client.HTTPConnection | None = None
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

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

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
            self._connection, self._pid = None, os.getpid()
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
            self._connection = kind(self._parsed.hostname, self._parsed.port, timeout=self._timeout)
        return self._connection


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

    def shards(self) -> list[str]:
        return layout.complete_shards(self.dataset)

    def cache_token(self, name: str) -> str:
        info = (self.dataset / name).info()  # a replaced shard has a new ETag (or size)
        return f"{self.location}/{name}:{info['size']}:{info['etag']}"

    def __getstate__(self) -> dict:
        return {"dataset": self.dataset}  # a Location pickles with its filesystem's options

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["dataset"])


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
