"""A file or folder of a dataset, on a local disk or on any fsspec filesystem (``s3://``, ``gs://``, ...).

Every stage reads and writes through :class:`Location`, so one code path serves a local folder and a
bucket. The two differ where it matters for safety and say so here, in one place:

- a write is whole or absent: locally a temporary sibling is fsynced and renamed over the name; on
  an object store one upload (a multipart upload completes atomically or not at all), aborted on error;
- :meth:`Location.create` writes only if the name is free (``O_EXCL`` locally, ``If-None-Match: *``
  on S3): the commit protocol's arbiter between two writers of one shard;
- listings are never cached (another process may have written since);
- a failing store (connection refused, HTTP 500/503) is retried with backoff for
  ``MMDATA_STORAGE_RETRY_SECONDS`` (default 30) and then fails with :class:`StorageError` naming
  the object; a missing object is a plain ``FileNotFoundError`` at once.

Credentials and endpoints come the standard way (``AWS_*`` variables including ``AWS_ENDPOINT_URL``,
``~/.aws``, ``GOOGLE_APPLICATION_CREDENTIALS``); ``storage_options`` passes anything else to the
fsspec filesystem. A Location pickles with its filesystem's options, so tasks on other processes and
nodes reach the same store.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Callable, Iterator, TypeVar

TEMP_SUFFIX = ".tmp"
_RETRY_ENV = "MMDATA_STORAGE_RETRY_SECONDS"
_NOT_RETRIED = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_T = TypeVar("_T")
# Errors of the client's configuration (no credentials, a malformed request): no retry can change them.
_CONFIGURATION_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "ParamValidationError", "NoRegionError",
                         "InvalidConfigError", "ProfileNotFound")


_FORK_PINNED: list = []  # filled just before a fork; in the child the parent's filesystems stay referenced


def _pin_filesystems() -> None:
    """Before a fork (a DataLoader worker), reference every cached fsspec filesystem, so the child never
    finalizes one: an s3fs instance finalized there closes its connections, which unregisters them
    from the event loop's epoll that parent and child share, and the parent's next request hangs.
    fsspec drops its instance cache in the child, and :attr:`Location.fs` builds the child its own."""
    spec = sys.modules.get("fsspec.spec")
    pending = [spec.AbstractFileSystem] if spec is not None else []
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        _FORK_PINNED.extend(kind.__dict__.get("_cache", {}).values())


os.register_at_fork(before=_pin_filesystems, after_in_parent=_FORK_PINNED.clear)


class StorageError(OSError):
    """The store kept failing (unreachable, or answering errors) for an object, after retries."""


def location(path: str | os.PathLike | "Location", storage_options: dict | None = None) -> "Location":
    """A Location for a local path, a ``file://`` URL or any fsspec URL; a Location is returned as is
    (its own options kept). A URL whose protocol has no installed filesystem is refused by name."""
    if isinstance(path, Location):
        return path
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" not in text:
        return Location(None, str(Path(text)))
    protocol = text.split("://", 1)[0]
    try:
        import fsspec

        filesystem, fs_path = fsspec.core.url_to_fs(text, **_client_defaults(protocol, storage_options or {}))
    except ImportError as error:
        extra = {"s3": "mmdata[s3]", "s3a": "mmdata[s3]", "gs": "mmdata[gcs]", "gcs": "mmdata[gcs]"}.get(protocol)
        hint = f"pip install '{extra}'" if extra else "install the fsspec filesystem for it"
        raise ValueError(f"{text!r}: no filesystem for {protocol}:// is installed ({hint})") from error
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from error
    return Location(filesystem, fs_path.rstrip("/"))


def _client_defaults(protocol: str, options: dict) -> dict:
    """S3 clients retry little themselves (one retry, 10 s to connect): :func:`retrying` owns the
    budget, so ``MMDATA_STORAGE_RETRY_SECONDS`` bounds how long a failing store is waited for."""
    if protocol not in ("s3", "s3a") or "config_kwargs" in options:
        return options
    return {**options, "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 10}}


class Location:
    """A path on one filesystem: ``filesystem`` is ``None`` for the local disk (plain ``os`` calls:
    fsync and rename), else an fsspec filesystem."""

    def __init__(self, filesystem, path: str):
        self._fs, self._pid = filesystem, os.getpid()
        self.path = path

    @property
    def fs(self):
        """The filesystem; in a forked child (a DataLoader worker) a fresh instance: the parent's event
        loop and connections are not usable there."""
        if self._fs is not None and self._pid != os.getpid():
            _FORK_PINNED.append(self._fs)  # the parent's: never finalized here (see _pin_filesystems)
            self._fs, self._pid = type(self._fs)(**self._fs.storage_options), os.getpid()
        return self._fs

    def __getstate__(self) -> dict:
        return {"fs": self._fs, "path": self.path}

    def __setstate__(self, state: dict) -> None:
        self._fs, self._pid, self.path = state["fs"], os.getpid(), state["path"]

    # --- naming -----------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return self.fs is None

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> "Location":
        return Location(self.fs, self.path.rstrip("/").rsplit("/", 1)[0] if "/" in self.path else "")

    @property
    def url(self) -> str:
        """What a user would type: a local path, or ``protocol://path``."""
        if self.fs is None:
            return self.path
        return self.fs.unstrip_protocol(self.path)

    def __truediv__(self, name: str) -> "Location":
        return Location(self.fs, f"{self.path.rstrip('/')}/{name}" if self.path else name)

    def local_path(self) -> Path:
        """The local path; a remote location has none (callers that need one stage through a temp file)."""
        if self.fs is not None:
            raise ValueError(f"{self.url} is not on the local disk")
        return Path(self.path)

    def __fspath__(self) -> str:
        """Local locations work wherever a path does (``open``, pyarrow); a remote one refuses."""
        if self.fs is not None:
            raise TypeError(f"{self.url} is not on the local disk; read it through its Location")
        return self.path

    def __eq__(self, other) -> bool:
        """The same place: the same URL on a filesystem of the same kind and options."""
        return isinstance(other, Location) and self._identity() == other._identity()

    def _identity(self) -> tuple:
        if self._fs is None:
            return (self.path,)
        return self.url, type(self._fs), json.dumps(self._fs.storage_options, sort_keys=True, default=str)

    def __hash__(self) -> int:
        return hash(self.url)

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __str__(self) -> str:
        return self.url

    # --- reading ----------------------------------------------------------------------------------
    def exists(self) -> bool:
        if self.fs is None:
            return os.path.exists(self.path)
        return self._retry("check", lambda: self._fresh().exists(self.path))

    def is_file(self) -> bool:
        if self.fs is None:
            return os.path.isfile(self.path)
        return self._retry("check", lambda: self._fresh().isfile(self.path))

    def is_dir(self) -> bool:
        """A folder (locally) or a prefix holding at least one object (object stores have no empty folders)."""
        if self.fs is None:
            return os.path.isdir(self.path)
        return self._retry("list", lambda: bool(self._fresh().ls(self.path, detail=False)) if
                           self.fs.isdir(self.path) else False)

    def list(self) -> dict[str, dict]:
        """``{name: {"size", "etag", "type"}}`` of what lies directly in this folder; empty if absent."""
        if self.fs is None:
            try:
                entries = list(os.scandir(self.path))
            except (FileNotFoundError, NotADirectoryError):
                return {}
            return {entry.name: described for entry in entries if (described := _local_entry(entry)) is not None}

        def listing():
            try:
                found = self._fresh().ls(self.path, detail=True)
            except FileNotFoundError:
                return {}
            return {entry["name"].rstrip("/").rsplit("/", 1)[-1]: _entry(entry) for entry in found
                    if entry["name"].rstrip("/") != self.path}

        return self._retry("list", listing)

    def names(self, suffix: str = "") -> list[str]:
        """Names of the files directly in this folder ending in ``suffix``, sorted."""
        return sorted(name for name, entry in self.list().items() if entry["type"] == "file" and name.endswith(suffix))

    def info(self) -> dict:
        """``{"size", "etag"}`` of a file (etag ``None`` locally)."""
        if self.fs is None:
            return {"size": os.path.getsize(self.path), "etag": None, "type": "file"}
        return self._retry("stat", lambda: _entry(self._fresh().info(self.path)))

    def read_bytes(self) -> bytes:
        if self.fs is None:
            return Path(self.path).read_bytes()
        return self._retry("read", lambda: self.fs.cat_file(self.path))

    def read_range(self, offset: int, size: int) -> bytes:
        if self.fs is None:
            with open(self.path, "rb") as handle:
                return os.pread(handle.fileno(), size, offset)
        return self._retry("read", lambda: self.fs.cat_file(self.path, start=offset, end=offset + size))

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def read_json(self):
        return json.loads(self.read_bytes())

    def open(self, mode: str = "rb") -> IO:
        """A seekable reader (remote: ranged reads as the caller seeks)."""
        if "r" not in mode:
            raise ValueError("Location.open reads; write with writer(), write_bytes() or create()")
        if self.fs is None:
            return open(self.path, mode)
        return self._retry("open", lambda: self.fs.open(self.path, mode))

    # --- writing ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, mode: str = "wb") -> Iterator[IO]:
        """Write the whole file through a local temporary, then put it in place in one step (rename
        locally, one upload remotely); on error nothing appears under the name."""
        if self.fs is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            temp = temp_path_for(self.path)
            try:
                with open(temp, mode) as handle:
                    yield handle
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
            return
        with staging_file() as temp:
            with open(temp, mode) as handle:
                yield handle
            self.put_file(temp)

    def write_bytes(self, data: bytes) -> None:
        if self.fs is None:
            with self.writer() as handle:
                handle.write(data)
            return
        self._retry("write", lambda: self.fs.pipe_file(self.path, data))

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_json(self, payload) -> None:
        self.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")

    def put_file(self, local: str | os.PathLike) -> None:
        """Put a finished local file here whole (moved locally, uploaded remotely)."""
        if self.fs is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            os.replace(local, self.path)
            return
        self._retry("upload", lambda: self.fs.put_file(os.fspath(local), self.path))

    def create(self, data: bytes) -> bool:
        """Write ``data`` only if nothing is here yet; ``False`` if something is (whoever wrote first wins).

        Locally a linked temporary (atomic, fails if the name exists). Remotely ``If-None-Match: *``;
        a filesystem that cannot do a conditional write gets check-then-write, which is not safe
        against a concurrent writer (documented in ARCHITECTURE.md)."""
        if self.fs is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            temp = temp_path_for(self.path)
            try:
                with open(temp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(temp, self.path)
                return True
            except FileExistsError:
                return False
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)

        def conditional():
            try:
                self.fs.pipe_file(self.path, data, mode="create")
            except FileExistsError:
                return False
            except TypeError:  # a filesystem without exclusive writes
                if self._fresh().exists(self.path):
                    return False
                self.fs.pipe_file(self.path, data)
            return True

        return self._retry("create", conditional)

    def copy_to(self, target: "Location") -> None:
        """Copy this file to ``target`` on the same filesystem (server-side on object stores)."""
        if self.fs is None:
            with target.writer() as handle, open(self.path, "rb") as source:
                shutil.copyfileobj(source, handle, 1 << 20)
            return
        self._retry("copy", lambda: self.fs.copy(self.path, target.path))

    def remove(self) -> None:
        """Delete this file if it exists."""
        if self.fs is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return

        def delete():
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path)

        self._retry("delete", delete)

    def remove_tree(self) -> None:
        """Delete this folder (prefix) and everything in it, if it exists."""
        if self.fs is None:
            shutil.rmtree(self.path, ignore_errors=True)
            return

        def delete():
            with contextlib.suppress(FileNotFoundError):
                if self._fresh().exists(self.path):
                    self.fs.rm(self.path, recursive=True)

        self._retry("delete", delete)

    def make_dirs(self) -> None:
        """Create the folder locally; on an object store (which needs no folders) check that its bucket
        exists, so a job writing to a mistyped bucket fails at once, naming it."""
        if self.fs is None:
            os.makedirs(self.path, exist_ok=True)
            return
        bucket = self.path.split("/", 1)[0]
        if bucket and not self._retry("check", lambda: self._fresh().exists(bucket)):
            raise FileNotFoundError(f"{self.fs.unstrip_protocol(bucket)} does not exist (create the bucket first); "
                                    f"needed for {self.url}")

    # --- internals --------------------------------------------------------------------------------
    def _fresh(self):
        """The filesystem with its listing cache dropped: another process may have written since."""
        self.fs.invalidate_cache(self.path)
        return self.fs

    def _retry(self, action: str, call: Callable[[], _T]) -> _T:
        return retrying(f"{action} {self.url}", call)


def retrying(what: str, call: Callable[[], _T]) -> _T:
    """Run ``call``, retrying store failures with jittered exponential backoff, then raise
    :class:`StorageError` naming ``what``. Answers that retrying cannot change (missing, exists,
    denied) are raised at once."""
    deadline = time.monotonic() + float(os.environ.get(_RETRY_ENV, "30"))
    delay = 0.2
    while True:
        try:
            return call()
        except _NOT_RETRIED:
            raise
        except (OSError, ConnectionError, TimeoutError) as error:
            if time.monotonic() + delay > deadline:
                raise StorageError(f"{what} failed: {error} (the store kept failing; gave up after retries)") from error
        except Exception as error:  # botocore and aiohttp errors that s3fs does not translate
            if type(error).__module__.split(".")[0] not in ("botocore", "aiobotocore", "aiohttp", "google"):
                raise
            if type(error).__name__ in _CONFIGURATION_ERRORS:
                raise
            if time.monotonic() + delay > deadline:
                raise StorageError(f"{what} failed: {error} (the store kept failing; gave up after retries)") from error
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 5.0)


def read_all(files: list[Location]) -> list[bytes]:
    """The bytes of each file, in order; files of one object store are fetched concurrently."""
    if not files or files[0].is_local or any(file.fs is not files[0].fs for file in files):
        return [file.read_bytes() for file in files]
    fs = files[0].fs
    found = retrying(f"read {len(files)} files under {files[0].parent.url}",
                     lambda: fs.cat([file.path for file in files], on_error="return"))
    results = []
    for file in files:
        data = found.get(file.path)
        if isinstance(data, FileNotFoundError):
            raise FileNotFoundError(f"{file.url} does not exist")
        if isinstance(data, BaseException):
            raise StorageError(f"read {file.url} failed: {data}") from data
        results.append(data)
    return results


def temp_path_for(path: str | os.PathLike) -> str:
    """A hidden sibling name that no reader globbing ``*.tar`` / ``*.parquet`` will pick up."""
    head, name = os.path.split(os.fspath(path))
    return os.path.join(head, f".{name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


@contextlib.contextmanager
def staging_file(suffix: str = "") -> Iterator[str]:
    """A local temporary file path (removed afterwards) for an object built before its upload."""
    handle, path = tempfile.mkstemp(prefix="mmdata-", suffix=suffix)
    os.close(handle)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _local_entry(entry: os.DirEntry) -> dict | None:
    """None for an entry gone since the folder was read: another process's temporary, renamed or removed."""
    try:
        if entry.is_dir():
            return {"type": "directory", "size": 0}
        return {"type": "file", "size": entry.stat().st_size if entry.is_file() else 0}
    except FileNotFoundError:
        return None


def _entry(info: dict) -> dict:
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    return {"type": info.get("type", "file"), "size": int(info.get("size") or 0),
            "etag": etag.strip('"') if isinstance(etag, str) else None}
