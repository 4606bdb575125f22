"""Streaming a dataset from a static HTTP server on 127.0.0.1 with ranged GETs: only the selected
samples' bytes travel."""

import contextlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmdata
from mmdata import layout
from mmdata.atomic import write_json, write_parquet
from mmdata.schemas.views import VIEW_SCHEMA
from mmdata.stream.source import SourceError

RANGE = re.compile(r"bytes=(\d+)-(\d+)$")


class RangeHandler(BaseHTTPRequestHandler):
    """A static file handler that honours single ``Range: bytes=a-b`` requests and logs what it sent."""

    protocol_version = "HTTP/1.1"
    root: Path
    served: list
    ranges = True

    def do_GET(self):  # noqa: N802 - the http.server API
        path = (self.root / self.path.lstrip("/")).resolve()
        if self.root not in path.parents or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        match = RANGE.match(self.headers.get("Range", ""))
        if match and self.ranges:
            start, end = int(match.group(1)), min(int(match.group(2)), len(data) - 1)
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.served.append((self.path.lstrip("/"), len(body)))  # logged before the client can see the reply
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(root, *, ranges=True):
    served = []
    handler = type("Handler", (RangeHandler,), {"root": Path(root).resolve(), "served": served, "ranges": ranges})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def publish(root, chosen_every=3):
    """Write the manifest a download leaves and a view of every ``chosen_every``-th sample."""
    shards = layout.complete_shards(root)
    write_json(layout.manifest_path(root), {"shards": [{"shard": s, "tar": f"{s}.tar"} for s in shards]})
    rows = pa.concat_tables([pq.read_table(layout.parquet_path(root, s)).append_column(
        "shard", pa.array([s] * pq.read_metadata(layout.parquet_path(root, s)).num_rows)) for s in shards])
    rows = rows.filter(pa.compute.equal(rows.column("status"), "success"))
    view = rows.take(list(range(0, rows.num_rows, chosen_every)))
    write_parquet(view, layout.views_dir(root) / "some.parquet", VIEW_SCHEMA)
    return view


def test_remote_view_reads_only_the_selected_ranges(dataset_factory):
    root, keys = dataset_factory([9, 4, 12], failures_every=6)
    view = publish(root)
    with serve(root) as (url, served):
        dataset = mmdata.stream(url, view="some", shuffle=False)
        items = list(dataset)
        assert [item["key"] for item in items] == view.column("key").to_pylist()
        assert items[0]["image"].size == (8, 8) and items[0]["caption"] == f"caption {items[0]['key']}"
        tar_bytes = sum(size for path, size in served if path.endswith(".tar"))
        assert tar_bytes == sum(view.column("tar_size").to_pylist())
        assert {path for path, _ in served if not path.endswith(".tar")} == {"manifest.json", "views/some.parquet"}
        served.clear()
        loader = mmdata.stream(url, view="some", decode=None).loader(
            batch_size=2, num_workers=2, collate_fn=lambda b: [i["key"] for i in b])
        assert sorted(k for batch in loader for k in batch) == sorted(view.column("key").to_pylist())


def test_remote_full_dataset_and_columns(dataset_factory):
    root, keys = dataset_factory([5, 7])
    publish(root)
    with serve(root) as (url, served):
        items = list(mmdata.stream(url, shuffle=False, columns=["quality"], decode=None))
    assert [item["key"] for item in items] == keys
    assert [item["quality"] for item in items][:3] == [0.0, 1.0, 2.0]
    tar_reads = [size for path, size in served if path.endswith(".tar")]
    assert len(tar_reads) == 2  # one sequential read per shard


def test_remote_needs_manifest_and_range_support(dataset_factory):
    root, keys = dataset_factory([4])
    with serve(root) as (url, served):
        with pytest.raises(ValueError, match="manifest.json"):
            mmdata.stream(url)
    publish(root)
    with serve(root, ranges=False) as (url, served):
        with pytest.raises(SourceError, match="support Range"):
            list(mmdata.stream(url, view="some"))
