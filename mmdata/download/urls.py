"""Which URLs the download stage fetches, and what it puts on the wire for them.

Only http and https URLs with a well-formed host are fetched. Host names become lower-case ASCII
(IDNA); the path and query are percent-encoded as UTF-8 where browsers encode them, keeping existing
escapes. Every redirect hop's URL goes through the same parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST_NAME = re.compile(r"^[a-z0-9_.-]+$")
# Characters left as they are when a URL's path and query are put on the request line: every
# reserved and unreserved ASCII character, and `%` so existing escapes survive. The rest
# (non-ASCII, space) is percent-encoded as UTF-8, as browsers do.
_URL_SAFE = "/?:@!$&'()*+,;=-._~%[]"


class InvalidURL(Exception):
    """A URL that is never opened; ``error_class`` names why in one token."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


@dataclass(frozen=True)
class Target:
    """A parsed http(s) URL: where to connect and what to send."""

    url: str
    scheme: str
    host: str  # lower-case ASCII (IDNA); an IPv6 literal without brackets
    port: int
    request_target: str  # path and query, ASCII
    host_header: str


def parse_url(url: object) -> Target:
    """Parse an http(s) URL; raises :class:`InvalidURL` for everything else."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidURL("empty_url", "the URL is empty")
    url = url.strip()
    if _CONTROL.search(url):
        raise InvalidURL("malformed_url", "the URL contains control characters")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            shown = f"{scheme}:" if scheme else "no scheme"
            raise InvalidURL("bad_scheme", f"only http and https URLs are fetched, got {shown}")
        raw_host = parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as error:  # a bad port or bracket
        raise InvalidURL("malformed_url", f"malformed URL: {error}") from None
    if not raw_host:
        raise InvalidURL("malformed_url", "the URL has no host")
    if ":" in raw_host:  # an IPv6 literal: checked as an address after resolution
        host, host_header = raw_host, f"[{raw_host}]"
    else:
        try:
            host = raw_host.lower() if raw_host.isascii() else raw_host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise InvalidURL("malformed_url", f"malformed host name {raw_host!r}") from None
        if not _HOST_NAME.match(host) or ".." in host or host.startswith("."):
            raise InvalidURL("malformed_url", f"malformed host name {raw_host!r}")
        host_header = host
    if parts.port not in (None, 80 if scheme == "http" else 443):
        host_header = f"{host_header}:{port}"
    request_target = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        request_target += "?" + quote(parts.query, safe=_URL_SAFE)
    return Target(url, scheme, host, port, request_target, host_header)
