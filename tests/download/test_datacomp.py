"""DataComp's own download call (``download_upstream.py`` in mlfoundations/datacomp) run as written,
from Python and from the command line, on a DataComp-shaped metadata folder (uid, url, text,
original_width, original_height, face_bboxes, sha256) whose images a server on 127.0.0.1 serves:
8-digit shard names, DataComp's uids in the uid column, blurred faces, and hash mismatches refused."""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from download_checks import read_metadata, tar_samples
from PIL import Image

import mmdata
from mmdata.cli import main

# download_upstream.py's img2dataset.download call, less url_list / output_folder / the process and
# thread counts, which it takes from its own command line (and bbox_col=None with --skip_bbox_blurring).
DATACOMP_CALL = dict(
    image_size=512,
    resize_mode="keep_ratio_largest",
    resize_only_if_bigger=True,
    output_format="webdataset",
    input_format="parquet",
    url_col="url",
    caption_col="text",
    bbox_col="face_bboxes",
    save_additional_columns=["uid"],
    number_sample_per_shard=10000,
    oom_shard_count=8,
    verify_hash=["sha256", "sha256"],
)
RUN = dict(processes_count=2, thread_count=16, allow_network=["127.0.0.1/32"])  # loopback: mmdata refuses it unasked
FACE = [0.25, 0.25, 0.5, 0.5]  # x_min, y_min, x_max, y_max as fractions of the image
# (width, height, face boxes, sha256 as given): big images are shrunk to 512, small ones kept as they are
IMAGES = [
    (800, 600, [FACE], "right"),
    (640, 480, [], "right"),
    (300, 200, [FACE], "right"),
    (200, 300, [], "right"),
    (700, 500, [], "wrong"),
    (400, 400, [[0.6, 0.1, 0.9, 0.3], FACE], "right"),
]


class _ImageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, bodies: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _ServeBodies)
        self.bodies = bodies


class _ServeBodies(BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.server.bodies.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def noise_jpeg(seed: int, width: int, height: int) -> bytes:
    """Pixel noise: any blur changes it a lot, so a blurred region cannot pass for an untouched one."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def datacomp_pool(tmp_path_factory):
    """A metadata folder of two parquet files shaped like DataComp's pools, and its image server."""
    bodies, rows = {}, []
    for index, (width, height, boxes, given_hash) in enumerate(IMAGES):
        body = noise_jpeg(index, width, height)
        path = f"/pool/{index}.jpg"
        bodies[path] = body
        rows.append({"uid": uuid.UUID(int=0xDC000 + index).hex, "path": path, "text": f"caption {index}",
                     "original_width": width, "original_height": height, "face_bboxes": boxes,
                     "sha256": hashlib.sha256(body).hexdigest() if given_hash == "right" else "0" * 64})
    server = _ImageServer(bodies)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    for row in rows:
        row["url"] = f"http://127.0.0.1:{server.server_address[1]}{row.pop('path')}"
    metadata = tmp_path_factory.mktemp("datacomp") / "metadata"
    metadata.mkdir()
    schema = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                        ("original_width", pa.int64()), ("original_height", pa.int64()),
                        ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string())])
    for part, (start, stop) in enumerate([(0, 4), (4, len(rows))]):
        pq.write_table(pa.Table.from_pylist(rows[start:stop], schema=schema), metadata / f"{part:04d}.parquet")
    yield metadata, rows
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def python_run(datacomp_pool, tmp_path_factory):
    """``img2dataset.download(...)`` of download_upstream.py, as ``mmdata.download(...)``."""
    metadata, _ = datacomp_pool
    shards = tmp_path_factory.mktemp("python") / "shards"
    manifest = mmdata.download(url_list=str(metadata), output_folder=str(shards), **DATACOMP_CALL, **RUN)
    return shards, manifest


def fire_flag(name: str, value) -> str:
    text = "[" + ",".join(f'"{item}"' for item in value) + "]" if isinstance(value, list) else str(value)
    return f"--{name}={text}"


def images_by_uid(shards) -> dict[str, Image.Image]:
    samples = tar_samples(shards)
    return {row["uid"]: Image.open(io.BytesIO(samples[row["key"]]["jpg"])).convert("RGB")
            for row in read_metadata(shards).to_pylist() if row["status"] == "success"}


def test_datacomp_call_writes_8_digit_shards_with_datacomp_uids(datacomp_pool, python_run):
    _, rows = datacomp_pool
    shards, manifest = python_run
    assert sorted(path.name for path in shards.iterdir()) == [
        "00000000.parquet", "00000000.tar", "00000000_stats.json", "manifest.json"]
    metadata = read_metadata(shards).to_pylist()
    assert [row["uid"] for row in metadata] == [row["uid"] for row in rows]  # DataComp's uids, in input order
    assert [row["key"] for row in metadata] == [f"00000000{index:04d}" for index in range(len(rows))]
    assert [row["caption"] for row in metadata] == [row["text"] for row in rows]
    assert [row["face_bboxes"] for row in metadata] == [row["face_bboxes"] for row in rows]
    samples = tar_samples(shards)
    for row in metadata:
        if row["status"] == "success":
            assert set(samples[row["key"]]) == {"jpg", "txt", "json"}
    assert manifest["totals"]["successes"] == len(rows) - 1


def test_datacomp_call_resizes_only_bigger_images(datacomp_pool, python_run):
    _, rows = datacomp_pool
    shards, _ = python_run
    sizes = {row["uid"]: (row["width"], row["height"]) for row in read_metadata(shards).to_pylist()}
    assert sizes[rows[0]["uid"]] == (512, 384)  # 800x600: the longer side to 512
    assert sizes[rows[1]["uid"]] == (512, 384)
    assert sizes[rows[2]["uid"]] == (300, 200)  # within 512: kept as it is (resize_only_if_bigger)
    assert sizes[rows[3]["uid"]] == (200, 300)


def test_a_row_whose_sha256_differs_fails_with_a_hash_mismatch(datacomp_pool, python_run):
    _, rows = datacomp_pool
    shards, _ = python_run
    by_uid = {row["uid"]: row for row in read_metadata(shards).to_pylist()}
    wrong = by_uid[rows[4]["uid"]]
    assert wrong["status"] != "success" and "hash" in wrong["error_message"].lower()
    assert wrong["key"] not in tar_samples(shards)
    assert all(by_uid[row["uid"]]["status"] == "success" for row in rows if row["sha256"] != "0" * 64)


def test_faces_are_blurred_and_nothing_else(datacomp_pool, python_run, tmp_path):
    metadata, rows = datacomp_pool
    shards, _ = python_run
    unblurred_shards = tmp_path / "unblurred"  # download_upstream.py --skip_bbox_blurring: bbox_col=None
    mmdata.download(url_list=str(metadata), output_folder=str(unblurred_shards), **{**DATACOMP_CALL,
                                                                                    "bbox_col": None}, **RUN)
    blurred, unblurred = images_by_uid(shards), images_by_uid(unblurred_shards)
    stored = [row for row in rows if row["sha256"] != "0" * 64]
    assert set(blurred) == set(unblurred) == {row["uid"] for row in stored}
    for row in stored:
        difference = np.abs(np.asarray(blurred[row["uid"]], np.int16) - np.asarray(unblurred[row["uid"]], np.int16))
        if not row["face_bboxes"]:
            assert difference.max() == 0, "an image without boxes is stored as without blurring"
            continue
        height, width = difference.shape[:2]
        x0, y0, x1, y1 = (int(fraction * size) for fraction, size in zip(FACE, (width, height, width, height)))
        inside = difference[y0 + 4:y1 - 4, x0 + 4:x1 - 4]
        assert inside.mean() > 20, f"{row['uid']}: the face is not blurred"
        # Beyond the box grown by 10% of its side, the blur kernel's reach and a JPEG block: untouched.
        side = max(x1 - x0, y1 - y0)
        reach = int(0.1 * side) + int(np.ceil(4 * 0.1 * side)) + 16
        far_right = difference[:, min(width, x1 + reach):]
        far_below = difference[min(height, y1 + reach):, :]
        if len(row["face_bboxes"]) == 1:
            for far in (far_right, far_below):
                assert far.size and far.mean() < 0.5, f"{row['uid']}: blurring reached beyond the face"


def test_datacomp_call_on_the_command_line_makes_the_same_dataset(datacomp_pool, python_run, tmp_path, capsys):
    metadata, _ = datacomp_pool
    shards, _ = python_run
    cli_shards = tmp_path / "shards"
    flags = [fire_flag(name, value) for name, value in {**DATACOMP_CALL, **RUN}.items()]
    assert main(["download", f"--url_list={metadata}", f"--output_folder={cli_shards}", *flags]) == 0
    assert "5 stored" in capsys.readouterr().out
    assert read_metadata(cli_shards).to_pylist() == read_metadata(shards).to_pylist()
    assert tar_samples(cli_shards) == tar_samples(shards)
