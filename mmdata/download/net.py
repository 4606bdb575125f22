"""Fetching one URL from the open web, safely: the download stage's only network code.

Built on http.client's response parser over sockets this module opens itself, because every other
client resolves the host again when it connects: here the address that passed the SSRF check is the
one connected to (TLS is wrapped around that socket with the URL's host name for SNI and
certificate checks). Every redirect hop is parsed, resolved and checked again. One deadline covers
DNS, connect, TLS, the request, the headers and every body read, so a server dripping one byte at a
time cannot hold a thread. Bodies are capped while streaming, whatever Content-Length says, and
never decompressed (we ask for identity; a gzip body is just bytes under the cap).

Failures come back as a FetchResult with a status from the closed set in schemas/samples.py and a
short error class; nothing raises for a bad URL or a bad server.
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
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from mmdata import __version__
from mmdata.download.addresses import Endpoint, IPNetwork, ResolveError, Resolver, block_reason, parse_networks
from mmdata.download.robots import opt_out_directive
from mmdata.schemas.samples import SUCCESS

INVALID_URL = "invalid_url"
BLOCKED = "blocked"
OPTED_OUT = "opted_out"
FAILED = "failed_to_download"

# Error classes worth another try later (`--retry-failed`): the server or the path may recover.
TRANSIENT_ERROR_CLASSES: frozenset[str] = frozenset(
    {"timeout", "connection_error", "dns_error", "rate_limited", "host_backoff", "host_busy"}
    | {f"http_{code}" for code in range(500, 600)}
)
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST_NAME = re.compile(r"^[a-z0-9_.-]+$")
# Characters left as they are when a URL's path and query are put on the request line: every
# reserved and unreserved ASCII character, and `%` so existing escapes survive. The rest
# (non-ASCII, space) is percent-encoded as UTF-8, as browsers do.
_URL_SAFE = "/?:@!$&'()*+,;=-._~%[]"
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


@dataclass
class FetchResult:
    """What became of one URL; `body` is set only on success."""

    status: str
    error_class: str | None = None
    error_message: str | None = None
    body: bytes | None = None
    http_status: int | None = None
    final_url: str | None = None
    attempts: int = 0

    @property
    def transient(self) -> bool:
        return self.error_class in TRANSIENT_ERROR_CLASSES


class _Failure(Exception):
    """The one failure path inside this module: becomes a FetchResult in Fetcher.fetch."""

    def __init__(self, status: str, error_class: str, message: str, *, http_status: int | None = None,
                 retry_after: float | None = None, url: str | None = None):
        super().__init__(message)
        self.status, self.error_class, self.message = status, error_class, message
        self.http_status, self.retry_after, self.url = http_status, retry_after, url


@dataclass(frozen=True)
class _Target:
    """A parsed http(s) URL: where to connect and what to send."""

    url: str
    scheme: str
    host: str  # lower-case ASCII (IDNA); an IPv6 literal without brackets
    port: int
    request_target: str  # path and query, ASCII
    host_header: str


def _parse_url(url: object) -> _Target:
    """Parse an http(s) URL, refusing everything else with an `invalid_url` _Failure."""
    if not isinstance(url, str) or not url.strip():
        raise _Failure(INVALID_URL, "empty_url", "the URL is empty")
    url = url.strip()
    if _CONTROL.search(url):
        raise _Failure(INVALID_URL, "malformed_url", "the URL contains control characters")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            shown = f"{scheme}:" if scheme else "no scheme"
            raise _Failure(INVALID_URL, "bad_scheme", f"only http and https URLs are fetched, got {shown}")
        raw_host = parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as error:  # a bad port or bracket
        raise _Failure(INVALID_URL, "malformed_url", f"malformed URL: {error}") from None
    if not raw_host:
        raise _Failure(INVALID_URL, "malformed_url", "the URL has no host")
    if ":" in raw_host:  # an IPv6 literal: checked as an address after resolution
        host, host_header = raw_host, f"[{raw_host}]"
    else:
        try:
            host = raw_host.encode("idna").decode("ascii").lower() if not raw_host.isascii() else raw_host.lower()
        except UnicodeError:
            raise _Failure(INVALID_URL, "malformed_url", f"malformed host name {raw_host!r}") from None
        if not _HOST_NAME.match(host) or ".." in host or host.startswith("."):
            raise _Failure(INVALID_URL, "malformed_url", f"malformed host name {raw_host!r}")
        host_header = host
    if parts.port not in (None, 80 if scheme == "http" else 443):
        host_header = f"{host_header}:{port}"
    request_target = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        request_target += "?" + quote(parts.query, safe=_URL_SAFE)
    return _Target(url, scheme, host, port, request_target, host_header)


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


class _HostGate:
    """Per-host concurrency cap and failure backoff. All gates of a Fetcher share one lock, so
    finding, waiting on and forgetting a gate are atomic together."""

    def __init__(self, lock: threading.Lock):
        self.condition = threading.Condition(lock)
        self.in_flight = 0
        self.waiting = 0
        self.consecutive_failures = 0
        self.backoff_until = 0.0

    def idle(self) -> bool:
        return self.in_flight == 0 and self.waiting == 0 and self.consecutive_failures == 0


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
        self._random = random.Random()
        self._hosts: dict[str, _HostGate] = {}
        self._hosts_lock = threading.Lock()
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
            target = _parse_url(url)
        except _Failure as failure:
            return FetchResult(failure.status, failure.error_class, failure.message, final_url=None, attempts=0)
        end_of_all = time.monotonic() + policy.timeout * (policy.retries + 1)
        attempts = 0
        while True:
            attempts += 1
            deadline = min(time.monotonic() + policy.timeout, end_of_all)
            try:
                body, http_status, final_url = self._attempt(target, deadline)
                return FetchResult(SUCCESS, body=body, http_status=http_status, final_url=final_url, attempts=attempts)
            except _Failure as failure:
                result = FetchResult(failure.status, failure.error_class, failure.message, None,
                                     failure.http_status, failure.url, attempts)
                retry_after = failure.retry_after
            if not result.transient or attempts > policy.retries or result.error_class == "host_backoff":
                return result
            delay = policy.backoff_base * 2 ** (attempts - 1) * self._random.uniform(0.5, 1.5)
            if retry_after is not None:
                delay = max(delay, retry_after)  # never earlier than the server asked
            if time.monotonic() + delay >= end_of_all:
                if retry_after is not None:
                    result.error_message += f" (Retry-After {retry_after:g} s is past the deadline)"
                return result
            time.sleep(delay)

    def _attempt(self, target: _Target, deadline: float) -> tuple[bytes, int, str]:
        """One attempt: follow redirects (each hop checked again) to a final 2xx; raises _Failure."""
        for _ in range(self.policy.max_redirects + 1):
            hop = self._hop(target, deadline)
            if hop.location is None:
                return hop.body, hop.http_status, target.url
            next_url = urljoin(target.url, hop.location)
            try:
                target = _parse_url(next_url)
            except _Failure as failure:
                # The first URL was fine; where it sends us is the server's doing.
                status = BLOCKED if failure.error_class == "bad_scheme" else FAILED
                raise _Failure(status, failure.error_class, f"redirect to {next_url[:200]!r}: {failure.message}",
                               http_status=hop.http_status, url=next_url) from None
        raise _Failure(FAILED, "too_many_redirects", f"more than {self.policy.max_redirects} redirects",
                       url=target.url)

    def _hop(self, target: _Target, deadline: float) -> _Hop:
        """One request under the host's gate; a connection failure or timeout counts against the host."""
        gate = self._enter_host(target, deadline)
        connection_failed = False
        try:
            return self._request(target, deadline)
        except _Failure as failure:
            connection_failed = failure.error_class in ("timeout", "connection_error")
            raise
        finally:
            self._leave_host(gate, connection_failed)

    def _request(self, target: _Target, deadline: float) -> _Hop:
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
                    raise _Failure(FAILED, f"http_{status}", f"HTTP {status} redirect without a Location",
                                   http_status=status, url=target.url)
                return _Hop(status, location=location)
            if status == 429:
                retry_after = _retry_after(response.getheader("Retry-After"))
                raise _Failure(FAILED, "rate_limited", "HTTP 429 Too Many Requests", http_status=status,
                               retry_after=retry_after, url=target.url)
            if not 200 <= status < 300:
                raise _Failure(FAILED, f"http_{status}", f"HTTP {status} {response.reason}".strip(),
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
            raise _Failure(FAILED, "timeout", f"no complete answer within {policy.timeout:g} s",
                           url=target.url) from None
        except ssl.SSLError as error:
            raise _Failure(FAILED, "tls_error", f"TLS: {error.reason or error}", url=target.url) from None
        except (http.client.RemoteDisconnected, ConnectionError) as error:
            raise _Failure(FAILED, "connection_error", f"connection failed: {error}", url=target.url) from None
        except (http.client.HTTPException, ValueError) as error:  # http.client raises ValueError on bad chunks
            raise _Failure(FAILED, "bad_response", f"malformed HTTP response: {type(error).__name__} {error}"[:300],
                           url=target.url) from None
        except OSError as error:
            raise _Failure(FAILED, "connection_error", f"connection failed: {error.strerror or error}",
                           url=target.url) from None
        finally:
            if sock is not None:
                sock.close()

    def _checked_endpoints(self, target: _Target, deadline: float) -> list[Endpoint]:
        try:
            endpoints = self._resolver.resolve(target.host, target.port, _remaining(deadline))
        except ResolveError as error:
            raise _Failure(FAILED, "dns_error" if error.transient else "dns_not_found", str(error),
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

    def _connect(self, target: _Target, endpoints: list[Endpoint], deadline: float) -> socket.socket:
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

    def _read_body(self, response: http.client.HTTPResponse, target: _Target) -> bytes:
        """The body, up to max_bytes, refusing early when Content-Length already says it is larger."""
        max_bytes = self.policy.max_bytes
        declared = response.length  # None when absent, chunked or unparseable
        if declared is not None and declared > max_bytes:
            raise _Failure(FAILED, "body_too_large", f"Content-Length {declared} is over the {max_bytes}-byte cap",
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
                raise _Failure(FAILED, "body_too_large", f"body is over the {max_bytes}-byte cap",
                               http_status=response.status, url=target.url)
        if declared is not None and total < declared:
            raise _Failure(FAILED, "incomplete_body",
                           f"connection closed after {total} of {declared} announced bytes",
                           http_status=response.status, url=target.url)
        return b"".join(chunks)

    @staticmethod
    def _read_declared(response: http.client.HTTPResponse, declared: int, target: _Target) -> bytes:
        """A body of announced length (already checked against the cap), read straight into one
        buffer: each socket read takes all that has arrived, with no per-chunk copies."""
        body = bytearray(declared)
        view, total = memoryview(body), 0
        while total < declared:
            received = response.readinto(view[total:])
            if not received:
                raise _Failure(FAILED, "incomplete_body",
                               f"connection closed after {total} of {declared} announced bytes",
                               http_status=response.status, url=target.url)
            total += received
        return bytes(body)

    # -- per-host gates --------------------------------------------------------------------------
    def _enter_host(self, target: _Target, deadline: float) -> _HostGate:
        """Wait for a slot on the host (up to the deadline); refuse at once while it is backed off."""
        cap = self.policy.max_per_host
        with self._hosts_lock:
            gate = self._hosts.get(target.host)
            if gate is None:
                if len(self._hosts) > 10_000:  # forget healthy idle hosts: memory stays bounded
                    self._hosts = {host: g for host, g in self._hosts.items() if not g.idle()}
                gate = self._hosts[target.host] = _HostGate(self._hosts_lock)
            gate.waiting += 1
            try:
                while True:
                    now = time.monotonic()
                    if gate.backoff_until > now:
                        raise _Failure(FAILED, "host_backoff",
                                       f"{target.host} failed {gate.consecutive_failures} times in a row; "
                                       f"backed off for {gate.backoff_until - now:.0f} s more", url=target.url)
                    if cap is None or gate.in_flight < cap:
                        gate.in_flight += 1
                        return gate
                    if now >= deadline:
                        raise _Failure(FAILED, "host_busy", f"no free slot for {target.host} before the deadline "
                                       f"(at most {cap} requests per host)", url=target.url)
                    gate.condition.wait(deadline - now)
            finally:
                gate.waiting -= 1

    def _leave_host(self, gate: _HostGate, connection_failed: bool) -> None:
        limit = self.policy.host_failure_limit
        with self._hosts_lock:
            gate.in_flight -= 1
            if connection_failed:
                gate.consecutive_failures += 1
                if limit is not None and gate.consecutive_failures >= limit:
                    gate.backoff_until = time.monotonic() + self.policy.host_backoff
                    gate.condition.notify_all()  # waiters leave with host_backoff now
            else:
                gate.consecutive_failures = 0
            gate.condition.notify()
