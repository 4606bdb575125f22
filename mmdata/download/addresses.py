"""Which network addresses a download may reach, and resolving a host to addresses that were checked.

A URL from the open web must not reach the machine itself or its private networks (SSRF). The check
runs on the resolved addresses, so every spelling of an address is covered (`127.1`, `0x7f000001`,
`2130706433`, `[::ffff:127.0.0.1]`, names resolving there); the caller then connects to exactly the
address that was checked, so a second DNS answer (rebinding) cannot change where it goes.
"""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 prefixes that carry an IPv4 address in their low 32 bits (NAT64 translates to it).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_TEREDO = ipaddress.ip_network("2001::/32")
# IANA special-purpose blocks that are not globally reachable, listed here because the ipaddress
# flags differ between Python versions (3.11 calls 192.0.0.8 global, for one).
_SPECIAL = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/96", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16", "fc00::/7",
        "fe80::/10", "fec0::/10", "ff00::/8",
    )
)


def parse_networks(cidrs: tuple[str, ...] | list[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings → networks; a ValueError names the one that does not parse."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(str(cidr).strip(), strict=False))
        except ValueError as error:
            raise ValueError(f"allowed network {cidr!r} is not a CIDR such as 10.0.0.0/8: {error}") from None
    return tuple(networks)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _in_networks(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def block_reason(address: IPAddress, allowed: tuple[IPNetwork, ...] = ()) -> str | None:
    """Why `address` may not be reached ("loopback", "private", ...), or None when it may."""
    if _in_networks(address, allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            if _in_networks(embedded, allowed):
                return None
            inner = block_reason(embedded)
            return f"{inner} {embedded}, embedded in {address.compressed}" if inner else None
        if address in _TEREDO:
            return "teredo tunnel"
        if address.scope_id:
            return "scoped"
    for reason, flag in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("site-local", getattr(address, "is_site_local", False)),
        ("not globally routable", not address.is_global or _in_networks(address, _SPECIAL)),
    ):
        if flag:
            return reason
    return None


class ResolveError(Exception):
    """The host has no usable address; `transient` says whether asking again later may help."""

    def __init__(self, message: str, *, transient: bool):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Endpoint:
    """A checked address to connect to: family plus the socket address from getaddrinfo."""

    family: int
    sockaddr: tuple
    address: IPAddress


def _endpoints(infos) -> list[Endpoint]:
    endpoints, seen = [], set()
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6) or sockaddr in seen:
            continue
        seen.add(sockaddr)
        text = sockaddr[0]
        if family == socket.AF_INET6 and sockaddr[3]:
            text = f"{text.split('%')[0]}%{sockaddr[3]}"
        endpoints.append(Endpoint(family, sockaddr, ipaddress.ip_address(text)))
    return endpoints


class Resolver:
    """getaddrinfo under a deadline: numeric hosts resolve inline, names on a small thread pool
    (a stuck DNS server cannot hold the caller past its deadline)."""

    def __init__(self, max_workers: int = 32):
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="mmdata-dns")

    def resolve(self, host: str, port: int, timeout: float) -> list[Endpoint]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            future = self._pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
            try:
                infos = future.result(timeout=max(timeout, 0.0))
            except FutureTimeout:
                future.cancel()
                raise TimeoutError(f"resolving {host} took longer than the deadline") from None
            except socket.gaierror as error:
                again = error.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None))
                raise ResolveError(f"cannot resolve {host}: {error.strerror or error}", transient=again) from None
            except UnicodeError:
                raise ResolveError(f"cannot resolve {host}: not a valid host name", transient=False) from None
        endpoints = _endpoints(infos)
        if not endpoints:
            raise ResolveError(f"{host} has no IPv4 or IPv6 address", transient=False)
        return endpoints

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
