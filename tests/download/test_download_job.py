"""The download job end to end against the local HTTP server: every route ends as the right row."""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from download_checks import check_dataset, write_input
from http_server import image_bytes
from PIL import Image

import mmdata
from mmdata import layout
from mmdata.download.config import DownloadConfig
from mmdata.download.worker import FETCH_AHEAD_PER_THREAD, RowDownloader, download_shard
from mmdata.shards import iter_samples

# (path on the test server or absolute URL, expected status, expected error class or None)
ROUTES = [
    ("/img/{run}-photo.jpg?w=320&h=240", "success", None),
    ("/img/{run}-alpha.png?w=64&h=64&mode=RGBA", "success", None),
    ("/img/{run}-web.webp?w=80&h=60", "success", None),
    ("/img/{run}-anim.gif?w=50&h=70&mode=P", "success", None),
    ("/img/{run}-grey.bmp?w=90&h=40&mode=L", "success", None),
    ("/img/{run}-print.tiff?w=40&h=40&mode=CMYK", "success", None),
    ("/img/{run}-cmyk.jpg?w=60&h=60&mode=CMYK", "success", None),
    ("/img/{run}-palette.png?w=60&h=30&mode=P", "success", None),
    ("/redirect-chain/2", "success", None),
    ("/flaky/{run}?fail=1", "success", None),  # 503 once, then fine: retried within the job
    ("/ratelimit/{run}?retry_after=1&fail=1", "success", None),  # 429 honouring Retry-After
    ("/optout?directive=otherbot: noai", "success", None),  # another agent's directive
    ("/img/{run}-tiny.jpg?w=8&h=8", "filtered", "too_small"),
    ("/status/404", "failed_to_download", "http_404"),
    ("/status/500", "failed_to_download", "http_500"),
    ("/redirect-loop", "failed_to_download", "too_many_redirects"),
    ("/redirect-to-url?url=http://10.20.30.40/x.jpg", "blocked", "private_address"),
    ("/redirect-to-url?url=file:///etc/passwd", "blocked", None),
    ("/slow-headers?s=5", "failed_to_download", "timeout"),
    ("/slow-drip?interval=0.05", "failed_to_download", "timeout"),
    ("/endless", "failed_to_download", "body_too_large"),
    ("/big?bytes=3000000", "failed_to_download", "body_too_large"),
    ("/html", "failed_to_decode", None),
    ("/garbage", "failed_to_decode", None),
    ("/truncated.jpg", "failed_to_decode", None),
    ("/bomb.png", "failed_to_decode", "pixel_bomb"),
    ("/optout?directive=noai", "opted_out", "x_robots_tag"),
    ("/optout?directive=mmdatatest: noimageai", "opted_out", "x_robots_tag"),
    ("ftp://example.com/a.jpg", "invalid_url", "bad_scheme"),
    ("file:///etc/passwd", "invalid_url", "bad_scheme"),
    ("http://", "invalid_url", None),
    ("", "invalid_url", None),
]
OPTIONS = dict(
    allow_network=["127.0.0.1/32"], timeout=1.0, retries=1, backoff_base=0.05, max_bytes=2_000_000,
    min_image_size=16, image_size=64, user_agent_token="mmdatatest", threads=8,
)


def route_rows(server, run: str) -> list[dict]:
    rows = []
    for index, (route, _, _) in enumerate(ROUTES):
        route = route.format(run=run)
        url = server.url(route) if route.startswith("/") else route
        rows.append({"url": url, "caption": f"row {index}: café ✓ \"quoted\" {run}", "source_id": f"id-{index}"})
    return rows


@pytest.mark.parametrize(
    "input_format, executor", [("parquet", "ray"), ("csv", "ray"), ("tsv", "ray"), ("parquet", "processes")]
)
def test_every_route_becomes_the_right_row(http_server, ray_local, tmp_path, input_format, executor):
    run = uuid.uuid4().hex[:8]
    rows = route_rows(http_server, run)
    source = write_input(rows, tmp_path, input_format)
    output = tmp_path / "out"
    shard_size = 7

    manifest = mmdata.download(
        input=source, output_dir=output, shard_size=shard_size, save_additional_columns=["source_id"],
        executor=executor, workers=2, **OPTIONS
    )

    by_key, samples = check_dataset(output, rows, shard_size)
    for index, (route, status, error_class) in enumerate(ROUTES):
        row = by_key[layout.sample_key(index // shard_size, index % shard_size, shard_size)]
        assert row["status"] == status, (route, row["error_message"])
        if error_class is not None:
            assert row["error_class"] == error_class, (route, row["error_message"])
        assert row["source_id"] == f"id-{index}"
    for key, members in samples.items():
        image = Image.open(io.BytesIO(members["jpg"]))
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
        assert json.loads(members["json"])["source_id"] == by_key[key]["source_id"]
    successes = [row for row in by_key.values() if row["status"] == "success"]
    assert all(row["http_status"] == 200 and row["byte_count"] > 0 for row in successes)

    assert layout.manifest_path(output).exists()
    assert [entry["shard"] for entry in manifest["shards"]] == ["00000", "00001", "00002", "00003", "00004"]
    assert manifest["totals"]["count"] == len(ROUTES)
    assert manifest["totals"]["successes"] == sum(status == "success" for _, status, _ in ROUTES)
    assert manifest["options"]["shard_size"] == shard_size
    assert json.loads(layout.manifest_path(output).read_text())["shards"] == manifest["shards"]


def test_shard_is_written_in_input_order_with_sha256_of_the_body(http_server, tmp_path):
    """The worker alone (no Ray): members in row order, hash of the downloaded bytes, caption as is."""
    names = [f"order-{index}" for index in range(12)]
    urls = [
        http_server.url(f"/img/{name}.jpg?w=100&h=50&delay={0.2 if index == 0 else 0}")
        for index, name in enumerate(names)
    ]
    captions = ["", None, "日本語のキャプション", *[f"c{index}" for index in range(9)]]
    config = DownloadConfig.from_options(input=tmp_path, output_dir=tmp_path / "out", shard_size=100, **OPTIONS)

    reports = []
    stats = download_shard(config, 3, pa.table({"url": urls, "caption": captions}),
                           lambda counts, force=False: reports.append((dict(counts), force)))

    assert (stats["count"], stats["successes"], stats["shard"]) == (12, 12, "00003")
    assert [counts["samples"] for counts, _ in reports] == [*range(1, 13), 12]  # one per row, then the final
    assert reports[-1] == ({"samples": 12, "successes": 12}, True)
    table = pq.read_table(layout.parquet_path(tmp_path / "out", 3))
    assert table["key"].to_pylist() == [layout.sample_key(3, index, 100) for index in range(12)]
    assert table["sha256"].to_pylist() == [
        hashlib.sha256(image_bytes(name, "jpg", 100, 50)).hexdigest() for name in names
    ]
    assert stats["bytes_downloaded"] == sum(len(image_bytes(name, "jpg", 100, 50)) for name in names)
    stored = list(iter_samples(layout.tar_path(tmp_path / "out", 3)))
    assert [key for key, _ in stored] == table["key"].to_pylist()
    assert [members.get("txt") for _, members in stored] == [None if c is None else c.encode() for c in captions]


def test_progress_counts_each_failure_class_and_agrees_with_the_stats(http_server, tmp_path):
    """The live counts a shard reports: samples, successes and one ``failed:<class>`` per failure
    class, cumulative, ending where the committed stats are."""
    config = DownloadConfig.from_options(input=tmp_path, output_dir=tmp_path / "out", shard_size=10, **OPTIONS)
    urls = [http_server.url("/img/progress-a.jpg?w=40&h=40"), http_server.url("/status/404"), "",
            http_server.url("/html"), http_server.url("/status/404"), http_server.url("/img/progress-b.jpg?w=40&h=40")]
    reports = []
    stats = download_shard(config, 0, pa.table({"url": urls, "caption": ["c"] * len(urls)}),
                           lambda counts, force=False: reports.append((dict(counts), force)))

    final = {"samples": 6, "successes": 2, "failed:http_404": 2, "failed:empty_url": 1, "failed:not_an_image": 1}
    assert reports[-1] == (final, True)
    assert reports[2][0] == {"samples": 3, "successes": 1, "failed:http_404": 1, "failed:empty_url": 1}
    for counts, _ in reports:
        failures = sum(n for name, n in counts.items() if name.startswith("failed:"))
        assert counts["successes"] + failures == counts["samples"]
    assert stats["error_classes"] == {name.removeprefix("failed:"): n for name, n in final.items() if ":" in name}
    assert (stats["count"], stats["successes"]) == (final["samples"], final["successes"])


def test_fetching_stays_a_bounded_window_ahead_of_decoding(http_server, tmp_path):
    """On a network faster than decoding, bodies waiting for the decoder must not pile up to the
    whole shard: URLs are taken from the input only a bounded window ahead of the outcomes."""
    config = DownloadConfig.from_options(input=tmp_path, output_dir=tmp_path / "out", **{**OPTIONS, "threads": 2})
    pulled = []

    def urls():
        for index in range(100):
            pulled.append(index)
            yield http_server.url(f"/img/ahead-{index}.jpg?w=20&h=20")

    with RowDownloader(config) as downloader:
        outcomes = downloader.map(urls())
        first = next(outcomes)
        assert first.fields["status"] == "success"
        assert len(pulled) <= FETCH_AHEAD_PER_THREAD * 2 + 1
        rest = list(outcomes)
    assert len(rest) == 99 and len(pulled) == 100


def test_saved_columns_keep_their_input_types_in_every_shard(http_server, tmp_path):
    """A saved column that is all null in one shard has the input's type there too, not type null:
    readers that concatenate the shards' parquet files would otherwise fail on the mismatch."""
    config = DownloadConfig.from_options(input=tmp_path, output_dir=tmp_path / "out", shard_size=2,
                                         save_additional_columns=["similarity", "width_hint", "tags"], **OPTIONS)
    url = http_server.url("/img/typed.jpg?w=64&h=64")
    extras = pa.schema([("similarity", pa.float32()), ("width_hint", pa.int16()), ("tags", pa.list_(pa.string()))])
    shards = [
        pa.table({"url": [url, url], "caption": ["a", "b"], "similarity": [0.3, 0.4], "width_hint": [1, 2],
                  "tags": [["x"], []]}, schema=pa.schema([("url", pa.string()), ("caption", pa.string()), *extras])),
        pa.table({"url": [url, "ftp://x/y.jpg"], "caption": ["c", "d"], "similarity": [None, None],
                  "width_hint": [None, None], "tags": [None, None]},
                 schema=pa.schema([("url", pa.string()), ("caption", pa.string()), *extras])),
    ]
    for shard, rows in enumerate(shards):
        download_shard(config, shard, rows)

    for shard in range(2):
        schema = pq.read_schema(layout.parquet_path(tmp_path / "out", shard))
        assert [schema.field(name).type for name in extras.names] == list(extras.types), shard
    combined = pq.ParquetDataset([str(layout.parquet_path(tmp_path / "out", shard)) for shard in range(2)]).read()
    assert combined["similarity"].to_pylist()[:2] == pytest.approx([0.3, 0.4])
    assert combined["similarity"].null_count == 2 and combined["tags"].to_pylist() == [["x"], [], None, None]


def test_config_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="unknown download option 'image_sise'"):
        DownloadConfig.from_options(input=tmp_path, output_dir=tmp_path / "o", image_sise=3)
    with pytest.raises(ValueError, match="threads"):
        DownloadConfig.from_options(input=tmp_path, output_dir=tmp_path / "o", threads=0)
    with pytest.raises(ValueError, match="resize_mode"):
        DownloadConfig.from_options(input=tmp_path, output_dir=tmp_path / "o", resize_mode="stretch")
    with pytest.raises(ValueError, match="input is required"):
        DownloadConfig.from_options(output_dir=tmp_path / "o")
