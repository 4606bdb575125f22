"""Fetching one URL from the open web, safely: the download stage's only network code.

Built on http.client's response parser over sockets this module opens itself, because every other
client resolves the host again when it connects: here the address that passed the SSRF check is the
one connected to (TLS is wrapped around that socket with the URL's host name for SNI and
certificate checks). Every redirect hop is parsed, resolved and checked again. One deadline covers
DNS, connect, TLS, the request, the headers and every body read, so a server dripping one byte at a
time cannot hold a thread. Bodies are capped while streaming, whatever Content-Length says, and
never decompressed (we ask for identity; a gzip body is just bytes under the cap).

Failures come back as a FetchResult whose Outcome has a status from the closed set in
schemas/samples.py and a short error class; nothing raises for a bad URL or a bad server. Which URLs
are fetched is :mod:`mmdata.download.urls`; the per-host caps and backoff are :mod:`mmdata.download.hosts`.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import os
import random
import re
import select
import socket
import ssl
import time
from dataclasses import dataclass, replace
from urllib.parse import urljoin

from mmdata import __version__
from mmdata.download.addresses import Endpoint, IPNetwork, ResolveError, Resolver, block_reason, parse_networks
from mmdata.download.hosts import HOST_BACKOFF, HOST_BUSY, HostGates, HostUnavailable
from mmdata.download.robots import opt_out_directive
from mmdata.download.urls import InvalidURL, Target, parse_url
from mmdata.schemas.samples import BLOCKED, FAILED_TO_DOWNLOAD, INVALID_URL, OK, OPTED_OUT, Outcome, OutcomeFields

# Error classes worth another try later (`--retry-failed`): the server or the path may recover.
TRANSIENT_ERROR_CLASSES: frozenset[str] = frozenset(
    {"timeout", "connection_error", "dns_error", "rate_limited", HOST_BACKOFF, HOST_BUSY}
    | {f"http_{code}" for code in range(500, 600)}
)
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_TOKEN = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True, kw_only=True)
class FetchPolicy:
    """How URLs are fetched. `timeout` is a deadline (seconds) for one whole attempt: DNS, connect,
    every redirect hop and the whole body; all attempts of a URL, with the sleeps between them,
    end within `timeout * (retries + 1)`."""

    timeout: float = 10.0
    retries: int = 2
    backoff_base: float = 0.5
    max_bytes: int = 20 * 2**20
    max_redirects: int = 5
    user_agent_token: str | None = None
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")
    allowed_networks: tuple[str, ...] = ()
    max_per_host: int | None = None
    host_failure_limit: int | None = 8
    host_backoff: float = 30.0
    ca_file: str | None = None  # extra trusted CA certificates (PEM), besides the system's
    # img2dataset's option: accept any certificate, unverified (only when asked: it lets anyone on the
    # path between us and the server substitute the image).
    ignore_ssl_certificate: bool = False

    def __post_init__(self):
        def require(ok: bool, message: str):
            if not ok:
                raise ValueError(message)

        def whole(value, minimum: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

        require(self.timeout > 0, f"timeout must be > 0 seconds, got {self.timeout}")
        require(whole(self.retries, 0), f"retries must be an integer >= 0, got {self.retries}")
        require(self.backoff_base >= 0, f"backoff_base must be >= 0 seconds, got {self.backoff_base}")
        require(whole(self.max_bytes, 1), f"max_bytes must be an integer >= 1, got {self.max_bytes}")
        require(whole(self.max_redirects, 0), f"max_redirects must be an integer >= 0, got {self.max_redirects}")
        require(self.user_agent_token is None or bool(_TOKEN.match(self.user_agent_token)),
                f"user_agent_token must be letters, digits, '.', '_' or '-', got {self.user_agent_token!r}")
        require(self.max_per_host is None or whole(self.max_per_host, 1),
                f"max_per_host must be None (no cap) or an integer >= 1, got {self.max_per_host}")
        require(self.host_failure_limit is None or whole(self.host_failure_limit, 1),
                f"host_failure_limit must be None (never back off) or an integer >= 1, got {self.host_failure_limit}")
        require(self.host_backoff > 0, f"host_backoff must be > 0 seconds, got {self.host_backoff}")
        require(not isinstance(self.disallowed_header_directives, str) and not isinstance(self.allowed_networks, str),
                "disallowed_header_directives and allowed_networks take a list, not one string")
        directives = tuple(str(d).strip().lower() for d in self.disallowed_header_directives)
        require(all(directives), "disallowed_header_directives must not contain empty names")
        object.__setattr__(self, "disallowed_header_directives", directives)
        object.__setattr__(self, "allowed_networks", tuple(str(n).strip() for n in self.allowed_networks))
        parse_networks(self.allowed_networks)  # raises a ValueError naming a bad CIDR
        require(self.ca_file is None or os.path.isfile(self.ca_file), f"ca_file {self.ca_file!r} is not a file")
        require(isinstance(self.ignore_ssl_certificate, bool),
                f"ignore_ssl_certificate must be True or False, got {self.ignore_ssl_certificate!r}")


@dataclass(frozen=True)
class FetchResult(OutcomeFields):
    """What became of one URL; `body` is set only on success."""

    outcome: Outcome
    body: bytes | None = None
    http_status: int | None = None
    final_url: str | None = None
    attempts: int = 0

    @property
    def transient(self) -> bool:
        return self.outcome.error_class in TRANSIENT_ERROR_CLASSES


class _Failure(Exception):
    """The one failure path inside this module: becomes a FetchResult in Fetcher.fetch."""

    def __init__(self, status: str, error_class: str, message: str, *, http_status: int | None = None,
                 retry_after: float | None = None, url: str | None = None):
        super().__init__(message)
        self.outcome = Outcome(status, error_class, message)
        self.http_status, self.retry_after, self.url = http_status, retry_after, url


class _DeadlineReader(io.RawIOBase):
    """Socket reads that each wait only until the shared deadline, so the deadline bounds the sum."""

    def __init__(self, sock: socket.socket, deadline: float):
        super().__init__()
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _DeadlineSocket:
    """What http.client.HTTPResponse needs from a socket (makefile), with deadline-bound reads."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode: str = "rb"):
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline), buffer_size=_CHUNK)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed")
    return remaining


def _handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """TLS handshake under the deadline as a whole (a blocking one waits per read, so a server
    trickling its certificate could stretch it without end)."""
    sock.setblocking(False)
    while True:
        try:
            sock.do_handshake()
            break
        except ssl.SSLWantReadError:
            readable, _, _ = select.select([sock], [], [], _remaining(deadline))
        except ssl.SSLWantWriteError:
            _, readable, _ = select.select([], [sock], [], _remaining(deadline))
        if not readable:
            raise TimeoutError("deadline passed during the TLS handshake")
    sock.setblocking(True)


def _header_text(value: str | None) -> str | None:
    """A header as the server meant it: http.client decodes bytes as Latin-1, most servers send UTF-8."""
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class _Hop:
    """One response: a redirect's Location, or a final 2xx body."""

    http_status: int
    location: str | None = None
    body: bytes | None = None


class Fetcher:
    """Fetches URLs under a FetchPolicy; thread-safe, one per worker process, so per-host limits
    and backoff hold across all its threads."""

    def __init__(self, policy: FetchPolicy):
        self.policy = policy
        self._allowed: tuple[IPNetwork, ...] = parse_networks(policy.allowed_networks)
        self._resolver = Resolver()
        self._ssl = ssl.create_default_context()
        if policy.ca_file:
            self._ssl.load_verify_locations(cafile=policy.ca_file)
        if policy.ignore_ssl_certificate:
            self._ssl.check_hostname = False
            self._ssl.verify_mode = ssl.CERT_NONE
        self._random = random.Random()
        self._hosts = HostGates(max_per_host=policy.max_per_host, failure_limit=policy.host_failure_limit,
                                backoff=policy.host_backoff)
        self._user_agent = f"mmdata/{__version__}" + (
            f" (compatible; {policy.user_agent_token})" if policy.user_agent_token else ""
        )

    def close(self) -> None:
        self._resolver.close()

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the retry loop ----------------------------------------------------------------------
    def fetch(self, url: str) -> FetchResult:
        """Fetch `url`, retrying transient failures with backoff; never raises for a bad URL or server."""
        policy = self.policy
        try:
            target = parse_url(url)
        except InvalidURL as invalid:
            return FetchResult(Outcome(INVALID_URL, invalid.error_class, str(invalid)))
        end_of_all = time.monotonic() + policy.timeout * (policy.retries + 1)
        attempts = 0
        while True:
            attempts += 1
            deadline = min(time.monotonic() + policy.timeout, end_of_all)
            try:
                body, http_status, final_url = self._attempt(target, deadline)
                return FetchResult(OK, body=body, http_status=http_status, final_url=final_url, attempts=attempts)
            except _Failure as failure:
                result = FetchResult(failure.outcome, None, failure.http_status, failure.url, attempts)
                retry_after = failure.retry_after
            if not result.transient or attempts > policy.retries or result.error_class == HOST_BACKOFF:
                return result
            delay = policy.backoff_base * 2 ** (attempts - 1) * self._random.uniform(0.5, 1.5)
            if retry_after is not None:
                delay = max(delay, retry_after)  # never earlier than the server asked
            if time.monotonic() + delay >= end_of_all:
                if retry_after is not None:
                    message = f"{result.error_message} (Retry-After {retry_after:g} s is past the deadline)"
                    result = replace(result, outcome=replace(result.outcome, error_message=message))
                return result
            time.sleep(delay)

    def _attempt(self, target: Target, deadline: float) -> tuple[bytes, int, str]:
        """One attempt: follow redirects (each hop checked again) to a final 2xx; raises _Failure."""
        for _ in range(self.policy.max_redirects + 1):
            hop = self._hop(target, deadline)
            if hop.location is None:
                return hop.body, hop.http_status, target.url
            next_url = urljoin(target.url, hop.location)
            try:
                target = parse_url(next_url)
            except InvalidURL as invalid:
                # The first URL was fine; where it sends us is the server's doing.
                status = BLOCKED if invalid.error_class == "bad_scheme" else FAILED_TO_DOWNLOAD
                raise _Failure(status, invalid.error_class, f"redirect to {next_url[:200]!r}: {invalid}",
                               http_status=hop.http_status, url=next_url) from None
        raise _Failure(FAILED_TO_DOWNLOAD, "too_many_redirects", f"more than {self.policy.max_redirects} redirects",
                       url=target.url)

    def _hop(self, target: Target, deadline: float) -> _Hop:
        """One request under the host's gate; a connection failure or timeout counts against the host."""
        try:
            gate = self._hosts.enter(target.host, deadline)
        except HostUnavailable as refused:
            raise _Failure(FAILED_TO_DOWNLOAD, refused.error_class, str(refused), url=target.url) from None
        connection_failed = False
        try:
            return self._request(target, deadline)
        except _Failure as failure:
            connection_failed = failure.outcome.error_class in ("timeout", "connection_error")
            raise
        finally:
            self._hosts.leave(gate, connection_failed=connection_failed)

    def _request(self, target: Target, deadline: float) -> _Hop:
        policy = self.policy
        sock = None
        try:
            endpoints = self._checked_endpoints(target, deadline)
            sock = self._connect(target, endpoints, deadline)
            request = (
                f"GET {target.request_target} HTTP/1.1\r\nHost: {target.host_header}\r\n"
                f"User-Agent: {self._user_agent}\r\nAccept: image/*, */*;q=0.5\r\n"
                "Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
            ).encode("ascii")
            sock.settimeout(_remaining(deadline))
            sock.sendall(request)
            response = http.client.HTTPResponse(_DeadlineSocket(sock, deadline), method="GET")
            response.begin()
            status = response.status
            if status in _REDIRECT_CODES:
                location = _header_text(response.getheader("Location"))
                if not location:
                    raise _Failure(FAILED_TO_DOWNLOAD, f"http_{status}", f"HTTP {status} redirect without a Location",
                                   http_status=status, url=target.url)
                return _Hop(status, location=location)
            if status == 429:
                retry_after = _retry_after(response.getheader("Retry-After"))
                raise _Failure(FAILED_TO_DOWNLOAD, "rate_limited", "HTTP 429 Too Many Requests", http_status=status,
                               retry_after=retry_after, url=target.url)
            if not 200 <= status < 300:
                raise _Failure(FAILED_TO_DOWNLOAD, f"http_{status}", f"HTTP {status} {response.reason}".strip(),
                               http_status=status, url=target.url)
            directive = opt_out_directive(response.headers.get_all("X-Robots-Tag", []),
                                          policy.user_agent_token, policy.disallowed_header_directives)
            if directive:
                raise _Failure(OPTED_OUT, "x_robots_tag", f"X-Robots-Tag: {directive}", http_status=status,
                               url=target.url)
            return _Hop(status, body=self._read_body(response, target))
        except _Failure:
            raise
        except TimeoutError:  # socket.timeout is TimeoutError
            raise _Failure(FAILED_TO_DOWNLOAD, "timeout", f"no complete answer within {policy.timeout:g} s",
                           url=target.url) from None
        except ssl.SSLError as error:
            raise _Failure(FAILED_TO_DOWNLOAD, "tls_error", f"TLS: {error.reason or error}", url=target.url) from None
        except (http.client.RemoteDisconnected, ConnectionError) as error:
            raise _Failure(FAILED_TO_DOWNLOAD, "connection_error", f"connection failed: {error}",
                           url=target.url) from None
        except (http.client.HTTPException, ValueError) as error:  # http.client raises ValueError on bad chunks
            message = f"malformed HTTP response: {type(error).__name__} {error}"[:300]
            raise _Failure(FAILED_TO_DOWNLOAD, "bad_response", message, url=target.url) from None
        except OSError as error:
            raise _Failure(FAILED_TO_DOWNLOAD, "connection_error", f"connection failed: {error.strerror or error}",
                           url=target.url) from None
        finally:
            if sock is not None:
                sock.close()

    def _checked_endpoints(self, target: Target, deadline: float) -> list[Endpoint]:
        try:
            endpoints = self._resolver.resolve(target.host, target.port, _remaining(deadline))
        except ResolveError as error:
            raise _Failure(FAILED_TO_DOWNLOAD, "dns_error" if error.transient else "dns_not_found", str(error),
                           url=target.url) from None
        # Any disallowed answer refuses the host: a name that also points inward is not to be trusted.
        for endpoint in endpoints:
            reason = block_reason(endpoint.address, self._allowed)
            if reason:
                shown = target.host if target.host == str(endpoint.address) else f"{target.host} = {endpoint.address}"
                raise _Failure(BLOCKED, "private_address",
                               f"{shown} is not reachable ({reason}); pass --allow-network CIDR to allow it",
                               url=target.url)
        return endpoints

    def _connect(self, target: Target, endpoints: list[Endpoint], deadline: float) -> socket.socket:
        """Connect to one of the checked addresses (never a fresh lookup); TLS for https."""
        last_error: OSError = OSError("no address to connect to")
        for index, endpoint in enumerate(endpoints):
            sock = socket.socket(endpoint.family, socket.SOCK_STREAM)
            try:
                # Later addresses keep a share of the time: one black-holed address cannot eat it all.
                sock.settimeout(_remaining(deadline) / (len(endpoints) - index))
                sock.connect(endpoint.sockaddr)
                break
            except OSError as error:  # TimeoutError included
                sock.close()
                last_error = error
        else:
            raise last_error
        if target.scheme == "https":
            try:
                sock = self._ssl.wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
                _handshake(sock, deadline)
            except BaseException:
                sock.close()
                raise
        return sock

    def _read_body(self, response: http.client.HTTPResponse, target: Target) -> bytes:
        """The body, up to max_bytes, refusing early when Content-Length already says it is larger."""
        max_bytes = self.policy.max_bytes
        declared = response.length  # None when absent, chunked or unparseable
        if declared is not None and declared > max_bytes:
            raise _Failure(FAILED_TO_DOWNLOAD, "body_too_large",
                           f"Content-Length {declared} is over the {max_bytes}-byte cap",
                           http_status=response.status, url=target.url)
        if declared is not None:
            return self._read_declared(response, declared, target)
        chunks, total = [], 0
        while True:
            chunk = response.read(min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise _Failure(FAILED_TO_DOWNLOAD, "body_too_large", f"body is over the {max_bytes}-byte cap",
                               http_status=response.status, url=target.url)
        return b"".join(chunks)

    @staticmethod
    def _read_declared(response: http.client.HTTPResponse, declared: int, target: Target) -> bytes:
        """A body of announced length (already checked against the cap), read straight into one
        buffer: each socket read takes all that has arrived, with no per-chunk copies."""
        body = bytearray(declared)
        view, total = memoryview(body), 0
        while total < declared:
            received = response.readinto(view[total:])
            if not received:
                raise _Failure(FAILED_TO_DOWNLOAD, "incomplete_body",
                               f"connection closed after {total} of {declared} announced bytes",
                               http_status=response.status, url=target.url)
            total += received
        return bytes(body)
