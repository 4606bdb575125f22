"""mmdata.download.net against a real server on 127.0.0.1: every route, retries, Retry-After,
URL refusal, per-host limits and backoff, TLS."""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from http_server import IMAGE_FORMATS, IMAGE_MODES, bomb_png, image_bytes

from mmdata.download.net import TRANSIENT_ERROR_CLASSES, Fetcher, FetchPolicy, FetchResult
from mmdata.download.robots import opt_out_directive
from mmdata.schemas.samples import STATUSES

LOCAL = ("127.0.0.1/32",)
pytestmark = pytest.mark.usefixtures("loopback_only")


def fetcher(**overrides) -> Fetcher:
    settings = dict(allowed_networks=LOCAL, timeout=1.0, retries=0, backoff_base=0.01, max_bytes=256 * 1024)
    return Fetcher(FetchPolicy(**(settings | overrides)))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_failed(result: FetchResult, status: str, error_class: str):
    assert (result.status, result.error_class) == (status, error_class), result
    assert result.status in STATUSES
    assert result.error_message
    assert result.body is None


@pytest.mark.parametrize("fmt", sorted(IMAGE_FORMATS))
@pytest.mark.parametrize("mode", IMAGE_MODES)
def test_images_in_every_format_arrive_byte_exact(http_server, fmt, mode):
    url = http_server.url(f"/img/every-{fmt}-{mode}.{fmt}?w=40&h=30&mode={mode}")
    result = fetcher().fetch(url)
    assert result.status == "success" and result.error_class is None
    assert result.body == image_bytes(f"every-{fmt}-{mode}", fmt, 40, 30, mode)
    assert (result.http_status, result.final_url, result.attempts) == (200, url, 1)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/html", b"<!doctype html>"),
        ("/garbage", None),
        ("/truncated.jpg", None),
        ("/bomb.png", bomb_png()),
    ],
)
def test_bodies_that_are_not_images_are_delivered_for_the_decoder_to_judge(http_server, path, expected):
    result = fetcher().fetch(http_server.url(path))
    assert result.status == "success"
    assert result.body and (expected is None or result.body.startswith(expected))


@pytest.mark.parametrize("code", [400, 403, 404, 410, 451])
def test_client_errors_fail_once_without_retry(http_server, code):
    path = f"/status/{code}"
    before = len(http_server.hits(path))
    result = fetcher(retries=3).fetch(http_server.url(path))
    assert_failed(result, "failed_to_download", f"http_{code}")
    assert (result.http_status, result.attempts, result.transient) == (code, 1, False)
    assert len(http_server.hits(path)) == before + 1


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_server_errors_are_transient_and_retried(http_server, code):
    path = f"/status/{code}"
    before = len(http_server.hits(path))
    result = fetcher(retries=2).fetch(http_server.url(path))
    assert_failed(result, "failed_to_download", f"http_{code}")
    assert (result.attempts, result.transient) == (3, True)
    assert len(http_server.hits(path)) == before + 3


def test_transient_503_then_200_succeeds_and_counts_attempts(http_server):
    path = f"/flaky/{unique('flaky')}"
    result = fetcher(retries=2).fetch(http_server.url(f"{path}?fail=2&code=503"))
    assert result.status == "success" and result.body == image_bytes(path)
    assert result.attempts == 3
    assert len(http_server.hits(path)) == 3


def test_retries_run_out(http_server):
    path = f"/flaky/{unique('flaky')}"
    result = fetcher(retries=1).fetch(http_server.url(f"{path}?fail=5&code=502"))
    assert_failed(result, "failed_to_download", "http_502")
    assert result.attempts == 2 and len(http_server.hits(path)) == 2


def test_429_waits_for_retry_after_before_asking_again(http_server):
    path = f"/ratelimit/{unique('rl')}"
    result = fetcher(retries=2, timeout=2.0).fetch(http_server.url(f"{path}?retry_after=1&fail=1"))
    assert result.status == "success" and result.attempts == 2
    first, second = http_server.hits(path)
    assert second - first >= 1.0


def test_retry_after_beyond_the_deadline_gives_up_at_once(http_server):
    path = f"/ratelimit/{unique('rl')}"
    started = time.monotonic()
    result = fetcher(retries=3, timeout=0.5).fetch(http_server.url(f"{path}?retry_after=60&fail=1"))
    assert_failed(result, "failed_to_download", "rate_limited")
    assert result.transient and "Retry-After 60" in result.error_message
    assert time.monotonic() - started < 5.0  # not the 60 s asked for
    assert len(http_server.hits(path)) == 1


def test_one_redirect_is_followed_and_reported(http_server):
    result = fetcher().fetch(http_server.url("/redirect?to=/img/after-redirect.png"))
    assert result.status == "success" and result.body == image_bytes("after-redirect", "png")
    assert result.final_url == http_server.url("/img/after-redirect.png")


def test_non_ascii_redirect_location_is_followed(http_server):
    result = fetcher().fetch(http_server.url("/redirect?to=/img/caf%C3%A9.jpg"))
    assert result.status == "success" and result.body == image_bytes("caf%C3%A9")


def test_redirect_chain_within_the_limit(http_server):
    result = fetcher(max_redirects=3).fetch(http_server.url("/redirect-chain/3"))
    assert result.status == "success" and result.final_url == http_server.url("/redirect-chain/0")


@pytest.mark.parametrize("path", ["/redirect-chain/4", "/redirect-loop"])
def test_too_many_redirects(http_server, path):
    before = http_server.total_hits()
    result = fetcher(max_redirects=3).fetch(http_server.url(path))
    assert_failed(result, "failed_to_download", "too_many_redirects")
    assert http_server.total_hits() - before == 4  # the first request and three redirects


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/"])
def test_redirect_to_another_scheme_is_blocked(http_server, target):
    result = fetcher().fetch(http_server.url(f"/redirect-to-url?url={target}"))
    assert_failed(result, "blocked", "bad_scheme")
    assert result.final_url == target


def test_redirect_to_a_disallowed_address_is_blocked(http_server):
    result = fetcher().fetch(http_server.url("/redirect-to-url?url=http://10.1.2.3/x.jpg"))
    assert_failed(result, "blocked", "private_address")
    assert "10.1.2.3" in result.error_message


def test_the_deadline_covers_all_redirect_hops_together(http_server):
    # Each hop answers in 0.25 s, well inside a per-request timeout of 0.6 s; four of them are not.
    result = fetcher(timeout=0.6).fetch(http_server.url("/redirect-chain/3?delay=0.25"))
    assert_failed(result, "failed_to_download", "timeout")
    assert fetcher(timeout=3.0).fetch(http_server.url("/redirect-chain/3?delay=0.25")).status == "success"


def test_request_headers_ask_for_identity_and_name_the_agent(http_server):
    path = f"/img/{unique('headers')}.jpg"
    assert fetcher(user_agent_token="mmbot").fetch(http_server.url(path)).status == "success"
    headers = {name.lower(): value for name, value in http_server.last_headers(path).items()}
    assert headers["accept-encoding"] == "identity"
    assert headers["host"] == f"127.0.0.1:{http_server.port}"
    assert headers["user-agent"].startswith("mmdata/") and "mmbot" in headers["user-agent"]


def test_slow_headers_hit_the_deadline(http_server):
    started = time.monotonic()
    result = fetcher(timeout=0.5).fetch(http_server.url("/slow-headers?s=3"))
    assert_failed(result, "failed_to_download", "timeout")
    assert result.transient
    assert 0.5 <= time.monotonic() - started < 2.0


def test_slow_drip_body_hits_the_deadline_not_a_per_read_timeout(http_server):
    started = time.monotonic()
    result = fetcher(timeout=0.6).fetch(http_server.url("/slow-drip?interval=0.05"))
    assert_failed(result, "failed_to_download", "timeout")
    assert time.monotonic() - started < 2.0  # a per-read timeout would wait for ever here


def test_endless_body_stops_at_the_byte_cap(http_server):
    result = fetcher(max_bytes=100_000).fetch(http_server.url("/endless"))
    assert_failed(result, "failed_to_download", "body_too_large")
    assert result.http_status == 200


def test_declared_oversize_body_is_refused_before_reading(http_server):
    result = fetcher(max_bytes=1000).fetch(http_server.url("/big?bytes=5000000"))
    assert_failed(result, "failed_to_download", "body_too_large")
    assert "Content-Length 5000000" in result.error_message


def test_body_exactly_at_the_cap_is_accepted(http_server):
    result = fetcher(max_bytes=4096).fetch(http_server.url("/big?bytes=4096"))
    assert result.status == "success" and len(result.body) == 4096


@pytest.mark.parametrize("path", ["/bad-chunked", "/many-headers?n=200"])
def test_malformed_responses_are_failures_not_exceptions(http_server, path):
    assert_failed(fetcher().fetch(http_server.url(path)), "failed_to_download", "bad_response")


@pytest.mark.parametrize(
    "values, token, opted_out",
    [
        (["noai"], None, True),
        (["noimageai, nofollow"], None, True),
        (["NoIndex"], None, True),
        (["nofollow, noarchive"], None, False),
        (["mmbot: noai"], "mmbot", True),
        (["MMBot: noai"], "mmbot", True),
        (["mmbot: noai"], "MMBOT", True),
        (["otherbot: noai"], "mmbot", False),
        (["otherbot: noai"], None, False),
        (["otherbot: noai", "noimageindex"], "mmbot", True),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None, False),
    ],
)
def test_x_robots_tag_semantics(values, token, opted_out):
    directives = ("noai", "noimageai", "noindex", "noimageindex")
    assert (opt_out_directive(values, token, directives) is not None) == opted_out


@pytest.mark.parametrize(
    "query, token, status",
    [
        ("directive=noai", None, "opted_out"),
        ("directive=noimageai,%20nofollow", None, "opted_out"),
        ("directive=mmbot:%20noai", "mmbot", "opted_out"),
        ("directive=mmbot:%20noai", None, "success"),
        ("directive=otherbot:%20noai", "mmbot", "success"),
        ("directive=nofollow&directive=noindex", None, "opted_out"),
        ("directive=nofollow", None, "success"),
    ],
)
def test_opt_out_header_from_the_server(http_server, query, token, status):
    result = fetcher(user_agent_token=token).fetch(http_server.url(f"/optout?{query}"))
    assert result.status == status
    if status == "opted_out":
        assert result.error_class == "x_robots_tag" and "X-Robots-Tag" in result.error_message
        assert result.body is None


def test_opt_out_can_be_switched_off(http_server):
    result = fetcher(disallowed_header_directives=()).fetch(http_server.url("/optout?directive=noai"))
    assert result.status == "success"


@pytest.mark.parametrize(
    "url, error_class",
    [
        ("", "empty_url"),
        ("   ", "empty_url"),
        (None, "empty_url"),
        ("file://127.0.0.1:{port}/img/x.jpg", "bad_scheme"),
        ("ftp://127.0.0.1:{port}/img/x.jpg", "bad_scheme"),
        ("gopher://127.0.0.1:{port}/", "bad_scheme"),
        ("javascript:alert(1)", "bad_scheme"),
        ("data:image/png;base64,iVBORw0KGgo=", "bad_scheme"),
        ("127.0.0.1:{port}/img/x.jpg", "bad_scheme"),
        ("//127.0.0.1:{port}/img/x.jpg", "bad_scheme"),
        ("http://", "malformed_url"),
        ("http:///img/x.jpg", "malformed_url"),
        ("http://127.0.0.1:99999/img/x.jpg", "malformed_url"),
        ("http://127.0.0.1:port/img/x.jpg", "malformed_url"),
        ("http://[::1/img/x.jpg", "malformed_url"),
        ("http://exa mple.com/x.jpg", "malformed_url"),
        ("http://a..b/x.jpg", "malformed_url"),
        ("http://127.0.0.1:{port}/img/x.jpg\r\nX-Injected: 1", "malformed_url"),
        ("http://127.0.0.1:{port}/img/x\x00.jpg", "malformed_url"),
    ],
)
def test_invalid_urls_are_never_opened(http_server, url, error_class):
    before = http_server.total_hits()
    if url is not None:
        url = url.replace("{port}", str(http_server.port))
    result = fetcher().fetch(url)
    assert_failed(result, "invalid_url", error_class)
    assert result.attempts == 0
    assert http_server.total_hits() == before


def test_non_ascii_and_spaces_in_the_path_are_percent_encoded(http_server):
    result = fetcher().fetch(http_server.url("/img/caf\u00e9 cr\u00e8me.jpg"))
    assert result.status == "success"
    assert result.body == image_bytes("caf%C3%A9%20cr%C3%A8me")
    assert http_server.hits("/img/caf%C3%A9%20cr%C3%A8me.jpg")


def test_per_host_concurrency_stays_under_the_cap(http_server):
    folder = unique("/img/concurrency")
    urls = [http_server.url(f"{folder}/{i}.jpg?delay=0.05") for i in range(24)]
    shared = fetcher(max_per_host=3, timeout=5.0)
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(shared.fetch, urls))
    assert [r.status for r in results] == ["success"] * 24
    assert http_server.max_in_flight(folder + "/") == 3


def test_without_a_cap_threads_reach_the_host_together(http_server):
    folder = unique("/img/uncapped")
    urls = [http_server.url(f"{folder}/{i}.jpg?delay=0.1") for i in range(8)]
    shared = fetcher(timeout=5.0)
    with ThreadPoolExecutor(8) as pool:
        assert all(r.status == "success" for r in pool.map(shared.fetch, urls))
    assert http_server.max_in_flight(folder + "/") > 3


def test_a_failing_host_is_backed_off_and_waiting_threads_leave_at_once(http_server):
    # Eight requests, one slot: the first connection dies after 0.5 s, which backs the host off;
    # the seven queued requests must then leave at once instead of each taking its turn.
    paths = [unique("/drop") for _ in range(8)]
    shared = fetcher(max_per_host=1, host_failure_limit=1, host_backoff=60.0, timeout=5.0)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(shared.fetch, [http_server.url(f"{p}?delay=0.5") for p in paths]))
    elapsed = time.monotonic() - started
    classes = sorted(r.error_class for r in results)
    assert classes == ["connection_error"] + ["host_backoff"] * 7
    assert all(r.transient and r.status == "failed_to_download" for r in results)
    assert sum(len(http_server.hits(p)) for p in paths) == 1
    assert elapsed < 2.0  # in turn they would take 8 x 0.5 s


def test_backoff_needs_consecutive_failures_and_a_success_resets_it(http_server):
    shared = fetcher(host_failure_limit=2, retries=0)
    drop = lambda: shared.fetch(http_server.url(unique("/drop")))  # noqa: E731
    image = lambda: shared.fetch(http_server.url(f"/img/{unique('reset')}.jpg"))  # noqa: E731
    assert drop().error_class == "connection_error"
    assert image().status == "success"
    assert drop().error_class == "connection_error"
    assert drop().error_class == "connection_error"  # second in a row: backs the host off
    assert image().error_class == "host_backoff"


def test_backoff_is_per_host(http_server):
    shared = fetcher(host_failure_limit=1, allowed_networks=("127.0.0.1/32", "::1/128"))
    assert shared.fetch(http_server.url(unique("/drop"))).error_class == "connection_error"
    assert shared.fetch(http_server.url("/img/other-host.jpg")).error_class == "host_backoff"
    other = http_server.url("/img/other-host.jpg").replace("127.0.0.1", "localhost")
    assert shared.fetch(other).status == "success"


def test_connection_refused_is_a_transient_connection_error():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = fetcher(retries=1).fetch(f"http://127.0.0.1:{port}/x.jpg")
    assert_failed(result, "failed_to_download", "connection_error")
    assert result.attempts == 2 and result.transient


def test_https_connects_with_sni_and_verifies_the_url_host(https_server, tls_certificate):
    url = https_server.url("/img/tls.jpg").replace("127.0.0.1", "localhost")
    result = fetcher(ca_file=tls_certificate[0]).fetch(url)
    assert result.status == "success" and result.body == image_bytes("tls")


def test_https_with_an_untrusted_certificate_fails(https_server):
    url = https_server.url("/img/tls.jpg").replace("127.0.0.1", "localhost")
    result = fetcher().fetch(url)
    assert_failed(result, "failed_to_download", "tls_error")
    assert not result.transient


def test_https_certificate_must_name_the_url_host(https_server, tls_certificate):
    result = fetcher(ca_file=tls_certificate[0]).fetch(https_server.url("/img/tls.jpg"))  # 127.0.0.1: not in it
    assert_failed(result, "failed_to_download", "tls_error")


def test_a_server_silent_during_the_tls_handshake_hits_the_deadline():
    import socket

    with socket.socket() as silent:  # listens (the kernel completes TCP) but never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        result = fetcher(timeout=0.5).fetch(f"https://localhost:{silent.getsockname()[1]}/x.jpg")
    assert_failed(result, "failed_to_download", "timeout")
    assert time.monotonic() - started < 2.0


def test_transient_classes_cover_retryable_failures_only():
    assert {"timeout", "connection_error", "rate_limited", "http_503", "host_backoff"} <= TRANSIENT_ERROR_CLASSES
    assert not {"http_404", "private_address", "bad_scheme", "body_too_large", "x_robots_tag"} & TRANSIENT_ERROR_CLASSES


@pytest.mark.parametrize(
    "settings",
    [
        {"timeout": 0},
        {"retries": -1},
        {"backoff_base": -1},
        {"max_bytes": 0},
        {"max_redirects": -1},
        {"user_agent_token": "bad token"},
        {"user_agent_token": "a\r\nX: y"},
        {"allowed_networks": ("not-a-cidr",)},
        {"allowed_networks": "127.0.0.1/32"},
        {"max_per_host": 0},
        {"host_failure_limit": 0},
        {"host_backoff": 0},
        {"disallowed_header_directives": ("noai", " ")},
        {"ca_file": "/nonexistent/ca.pem"},
    ],
)
def test_policy_refuses_bad_settings(settings):
    with pytest.raises(ValueError):
        FetchPolicy(**settings)


def test_policy_is_keyword_only_and_normalises_lists():
    with pytest.raises(TypeError):
        FetchPolicy(5.0)  # type: ignore[misc]
    policy = FetchPolicy(allowed_networks=["10.0.0.0/8"], disallowed_header_directives=["NoAI"])
    assert policy.allowed_networks == ("10.0.0.0/8",)
    assert policy.disallowed_header_directives == ("noai",)
