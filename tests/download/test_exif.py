"""img2dataset's exif column (``extract_exif``): the EXIF tags as exifread prints them, as JSON."""

from __future__ import annotations

import functools
import io
import json
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, TiffImagePlugin

import mmdata
from mmdata.download.image import ImageOptions, process_image
from mmdata.shards import iter_samples


def photo(fmt: str = "JPEG", *, exif: bool = True) -> bytes:
    """A small picture with a camera's EXIF: make, orientation, exposure time (in the EXIF directory)."""
    image = Image.new("RGB", (64, 48), (120, 80, 40))
    buffer = io.BytesIO()
    if not exif:
        image.save(buffer, fmt)
        return buffer.getvalue()
    tags = image.getexif()
    tags[0x010F] = "Canon"
    tags[0x0112] = 6
    tags.get_ifd(0x8769)[0x829A] = TiffImagePlugin.IFDRational(1, 100)
    image.save(buffer, fmt, exif=tags)
    return buffer.getvalue()


def img2dataset_exif(body: bytes) -> str:
    """What img2dataset's downloader stores for a body."""
    import exifread

    tags = exifread.process_file(io.BytesIO(body), details=False)
    return json.dumps({name: str(tag).strip() for name, tag in tags.items() if tag is not None})


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_is_img2dataset_s_json_of_the_tags(fmt):
    pytest.importorskip("exifread")
    body = photo(fmt)
    result = process_image(body, ImageOptions())
    tags = json.loads(result.exif)
    assert tags["Image Make"] == "Canon" and tags["Image Orientation"] == "Rotated 90 CW"
    if fmt == "JPEG":
        assert tags["EXIF ExposureTime"] == "1/100"
    assert result.exif == img2dataset_exif(body)


@pytest.mark.parametrize("body", [photo(exif=False), photo("PNG", exif=False), photo("WEBP", exif=False),
                                  photo("TIFF", exif=False)], ids=["jpeg", "png", "webp", "tiff"])
def test_no_exif_is_an_empty_object(body):
    assert process_image(body, ImageOptions()).exif == "{}"


def test_exif_off_failures_and_stored_bytes():
    assert process_image(photo(exif=False), ImageOptions(extract_exif=False)).exif is None
    assert process_image(b"<html></html>", ImageOptions()).exif is None
    too_small = process_image(photo(exif=False), ImageOptions(min_image_size=100))
    assert too_small.status == "filtered" and too_small.exif is None


def test_a_missing_exifread_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "exifread", None)  # makes `import exifread` fail
    assert process_image(photo(exif=False), ImageOptions()).exif == "{}"  # no EXIF: exifread not needed
    with pytest.raises(ImportError, match="exifread-nocycle.*extract_exif=False"):
        process_image(photo(), ImageOptions())


@pytest.fixture
def file_server(tmp_path):
    """A plain HTTP server on 127.0.0.1 serving the files of a folder."""
    folder = tmp_path / "www"
    folder.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_stores_the_exif_column(file_server, tmp_path):
    pytest.importorskip("exifread")
    folder, base = file_server
    (folder / "camera.jpg").write_bytes(photo())
    (folder / "plain.jpg").write_bytes(photo(exif=False))
    urls = [f"{base}/camera.jpg", f"{base}/plain.jpg", f"{base}/missing.jpg"]
    pq.write_table(pa.table({"url": urls, "caption": ["a", "b", "c"]}), tmp_path / "in.parquet")
    mmdata.download(input=tmp_path / "in.parquet", output_dir=tmp_path / "out", image_size=32,
                    allow_network=["127.0.0.1/32"], executor="inline")
    rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    assert [row["status"] for row in rows] == ["success", "success", "failed_to_download"]
    assert rows[0]["exif"] == img2dataset_exif(photo()) and json.loads(rows[0]["exif"])["Image Make"] == "Canon"
    assert rows[1]["exif"] == "{}" and rows[2]["exif"] is None
    sample = json.loads(next(members for _, members in iter_samples(tmp_path / "out" / "00000.tar"))["json"])
    assert sample["exif"] == rows[0]["exif"]
