"""Hostile-network battery (issue 7): SSRF in every spelling, DNS rebinding, redirects inward,
and bodies built to exhaust memory or hold threads.

Canaries are test servers on loopback addresses (127.0.0.1, 127.0.0.2 and ::1 where the machine has
IPv6, all on one port number): a blocked URL must leave them at zero hits, and the same URL with the
address allowed must reach one, which shows the zero is not an accident of routing.
"""

import ipaddress
import socket
import time
import tracemalloc
import urllib.request
import uuid

import pytest
from http_server import TestHTTPServer, image_bytes

from mmdata.download.addresses import block_reason, parse_networks
from mmdata.download.net import Fetcher, FetchPolicy

EVERYWHERE = ("0.0.0.0/0", "::/0")
pytestmark = pytest.mark.usefixtures("loopback_only")


def fetcher(**overrides) -> Fetcher:
    settings = dict(timeout=1.0, retries=0, max_bytes=256 * 1024)
    return Fetcher(FetchPolicy(**(settings | overrides)))


@pytest.fixture(scope="module")
def canaries(http_server):
    """The session server plus servers on 127.0.0.2 and ::1 (when available) on the same port."""
    servers = [http_server, TestHTTPServer("127.0.0.2", http_server.port).start()]
    try:
        servers.append(TestHTTPServer("::1", http_server.port).start())
    except OSError:
        pass  # no IPv6 loopback here: the IPv6 spellings still must be blocked, just not observed
    yield servers
    for server in servers[1:]:
        server.stop()


def canary_hits(canaries, path: str) -> int:
    return sum(len(server.hits(path)) for server in canaries)


@pytest.fixture
def fake_dns(monkeypatch):
    """Names under .test resolve to the addresses a test gives (a sequence: one answer per lookup,
    the last repeating); every lookup is counted. Other names go to the real resolver."""
    real = socket.getaddrinfo
    answers: dict[str, list[list[str]]] = {}
    lookups: dict[str, int] = {}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if isinstance(host, str) and host.endswith(".test"):
            lookups[host] = lookups.get(host, 0) + 1
            sequence = answers[host]
            addresses = sequence[min(lookups[host], len(sequence)) - 1]
            infos = []
            for address in addresses:
                family_ = socket.AF_INET6 if ":" in address else socket.AF_INET
                sockaddr = (address, port, 0, 0) if family_ == socket.AF_INET6 else (address, port)
                infos.append((family_, socket.SOCK_STREAM, 6, "", sockaddr))
            return infos
        return real(host, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, lookups


LOOPBACK_SPELLINGS = [
    "127.0.0.1", "127.1", "127.0.1", "0x7f000001", "0x7f.0.0.1", "2130706433", "017700000001",
    "0177.0.0.1", "0", "0.0.0.0", "127.0.0.2", "localhost", "LocalHost",
    "[::1]", "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_loopback_spelling_is_blocked_without_a_connection(canaries, host):
    path = f"/img/canary-{uuid.uuid4().hex}.jpg"
    url = f"http://{host}:{canaries[0].port}{path}"
    before = sum(server.total_hits() for server in canaries)
    result = fetcher().fetch(url)
    assert (result.status, result.error_class) == ("blocked", "private_address"), result
    assert "--allow-network" in result.error_message
    assert canary_hits(canaries, path) == 0
    assert sum(server.total_hits() for server in canaries) == before


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_the_same_spelling_reaches_a_canary_once_allowed(canaries, host):
    """Control for the test above: these URLs do lead to a canary, so its zero hits mean something."""
    is_ipv6 = host.startswith("[::1]") or host == "[0:0:0:0:0:0:0:1]"
    if is_ipv6 and len(canaries) < 3:
        pytest.skip("no IPv6 loopback on this machine")
    path = f"/img/canary-{uuid.uuid4().hex}.jpg"
    result = fetcher(allowed_networks=EVERYWHERE).fetch(f"http://{host}:{canaries[0].port}{path}")
    assert result.status == "success", result
    assert canary_hits(canaries, path) == 1


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1", "172.16.5.4", "192.168.0.1", "169.254.169.254", "100.64.0.1", "192.0.0.8", "192.0.2.1",
        "198.18.0.1", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
        "[fe80::1]", "[fc00::1]", "[fd12:3456::1]", "[fec0::1]", "[ff02::1]", "[2001:db8::1]", "[::]",
        "[::127.0.0.1]", "[::ffff:10.0.0.1]", "[::ffff:169.254.169.254]", "[2002:7f00:1::]", "[2002:a00:1::1]",
        "[64:ff9b::7f00:1]", "[64:ff9b::a9fe:a9fe]", "[2001::1]",
    ],
)
def test_private_and_special_addresses_are_refused_before_connecting(host):
    # The loopback_only guard fails the test if a connection to any of these is even attempted.
    result = fetcher().fetch(f"http://{host}/latest/meta-data/")
    assert (result.status, result.error_class) == ("blocked", "private_address"), result
    assert result.attempts == 1


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]
)
def test_public_addresses_pass_the_check(address):
    assert block_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "address, allowed, reason",
    [
        ("127.0.0.1", (), "loopback"),
        ("127.0.0.1", ("127.0.0.1/32",), None),
        ("127.0.0.2", ("127.0.0.1/32",), "loopback"),
        ("::ffff:127.0.0.1", ("127.0.0.1/32",), None),
        ("::ffff:127.0.0.2", ("127.0.0.1/32",), "loopback 127.0.0.2, embedded in ::ffff:7f00:2"),
        ("10.1.2.3", ("10.0.0.0/8",), None),
        ("10.1.2.3", ("::/0",), "private"),
        ("169.254.169.254", (), "link-local"),
        ("224.0.0.1", (), "multicast"),
        ("0.0.0.0", (), "unspecified"),
        ("100.64.0.1", (), "not globally routable"),
    ],
)
def test_block_reasons_and_allowed_networks(address, allowed, reason):
    assert block_reason(ipaddress.ip_address(address), parse_networks(allowed)) == reason


@pytest.mark.parametrize(
    "answer",
    [["127.0.0.1"], ["::1"], ["127.0.0.2"], ["93.184.216.34", "127.0.0.1"], ["::ffff:127.0.0.1"], ["10.0.0.7"]],
)
def test_names_resolving_inward_are_blocked(canaries, fake_dns, answer):
    answers, lookups = fake_dns
    answers["evil.test"] = [answer]
    path = f"/img/canary-{uuid.uuid4().hex}.jpg"
    result = fetcher().fetch(f"http://evil.test:{canaries[0].port}{path}")
    assert (result.status, result.error_class) == ("blocked", "private_address"), result
    assert canary_hits(canaries, path) == 0
    assert lookups["evil.test"] == 1


def test_dns_rebinding_cannot_move_the_connection(canaries, fake_dns):
    """The name first resolves to an allowed address, then to the canary on 127.0.0.2: the fetcher
    connects to the address it checked, and never asks again."""
    answers, lookups = fake_dns
    answers["rebind.test"] = [["127.0.0.1"], ["127.0.0.2"]]
    path = f"/img/rebind-{uuid.uuid4().hex}.jpg"
    url = f"http://rebind.test:{canaries[0].port}{path}"
    result = fetcher(allowed_networks=("127.0.0.1/32",)).fetch(url)
    assert result.status == "success" and result.body == image_bytes(path[len("/img/"):-len(".jpg")])
    assert lookups["rebind.test"] == 1
    assert len(canaries[0].hits(path)) == 1 and len(canaries[1].hits(path)) == 0
    # Control: a client that resolves again when it connects (urllib) is led to the canary.
    urllib.request.urlopen(url, timeout=2).read()
    assert len(canaries[1].hits(path)) == 1


REDIRECT_TARGETS = [
    "http://127.0.0.2:{port}{path}",
    "http://0x7f000002:{port}{path}",
    "http://2130706434:{port}{path}",
    "http://127.0.2:{port}{path}",
    "http://[::1]:{port}{path}",
    "http://[::ffff:127.0.0.2]:{port}{path}",
    "http://inward.test:{port}{path}",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://[fd00::1]/",
]


@pytest.mark.parametrize("target", REDIRECT_TARGETS)
def test_redirects_inward_are_blocked_at_the_hop(canaries, fake_dns, target):
    answers, _ = fake_dns
    answers["inward.test"] = [["127.0.0.2"]]
    path = f"/img/canary-{uuid.uuid4().hex}.jpg"
    location = target.format(port=canaries[0].port, path=path)
    result = fetcher(allowed_networks=("127.0.0.1/32",)).fetch(
        canaries[0].url(f"/redirect-to-url?url={location}")
    )
    assert (result.status, result.error_class) == ("blocked", "private_address"), result
    assert result.final_url == location
    assert canary_hits(canaries, path) == 0


def test_a_blocked_hop_deep_in_a_chain_is_still_blocked(canaries):
    path = f"/img/canary-{uuid.uuid4().hex}.jpg"
    inner = f"/redirect-to-url?url=http://127.0.0.2:{canaries[0].port}{path}"
    result = fetcher(allowed_networks=("127.0.0.1/32",)).fetch(canaries[0].url(f"/redirect?to={inner}"))
    assert result.status == "blocked"
    assert canary_hits(canaries, path) == 0


def test_allowed_networks_let_the_test_server_through(http_server):
    url = http_server.url("/img/allowed.jpg")
    assert fetcher().fetch(url).status == "blocked"
    assert fetcher(allowed_networks=("10.0.0.0/8",)).fetch(url).status == "blocked"
    assert fetcher(allowed_networks=("127.0.0.1/32",)).fetch(url).status == "success"


def _peak_memory(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


LOCAL = ("127.0.0.1/32",)


def test_gzip_bomb_is_capped_as_raw_bytes_never_inflated(http_server):
    cap = 64 * 1024
    result, peak = _peak_memory(
        lambda: fetcher(allowed_networks=LOCAL, max_bytes=cap, timeout=10.0).fetch(http_server.url("/gzip-bomb"))
    )
    assert (result.status, result.error_class) == ("failed_to_download", "body_too_large")
    assert peak < 16 * 2**20  # the stream inflates to 1 GiB; the server's own buffers are in this figure


def test_endless_body_memory_stays_near_the_cap(http_server):
    cap = 2 * 2**20
    result, peak = _peak_memory(
        lambda: fetcher(allowed_networks=LOCAL, max_bytes=cap, timeout=10.0).fetch(http_server.url("/endless"))
    )
    assert result.error_class == "body_too_large"
    assert peak < 3 * cap


def test_slow_drip_is_cut_at_the_deadline(http_server):
    started = time.monotonic()
    result = fetcher(allowed_networks=LOCAL, timeout=0.5).fetch(http_server.url("/slow-drip?interval=0.02"))
    assert (result.status, result.error_class) == ("failed_to_download", "timeout")
    assert time.monotonic() - started < 2.0  # each read is quick: only a whole-request deadline stops it


def test_content_length_larger_than_the_body_is_an_incomplete_body(http_server):
    result = fetcher(allowed_networks=LOCAL).fetch(http_server.url("/lying-length?claim=more"))
    assert (result.status, result.error_class) == ("failed_to_download", "incomplete_body")
    assert result.body is None


def test_content_length_smaller_than_the_body_is_read_as_declared(http_server):
    result = fetcher(allowed_networks=LOCAL).fetch(http_server.url("/lying-length?claim=less"))
    full = image_bytes("lying-length", "jpg", 128, 96)
    assert result.status == "success" and result.body == full[: len(full) // 2]


def test_huge_declared_length_is_refused_without_reading(http_server):
    result = fetcher(allowed_networks=LOCAL).fetch(http_server.url("/lying-length?claim=huge"))
    assert result.error_class == "body_too_large"
    assert "Content-Length 1000000000000" in result.error_message
