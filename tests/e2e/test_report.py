"""The report of a dataset that was only downloaded, opened in real headless Chromium: every section
is there, the stages that did not run say so, every image loads, and nothing logs an error."""

import io

from browser import open_report, require_chromium
from PIL import Image

from mmdata.layout import sample_key, sample_uid
from mmdata.report.html import SECTIONS, write_report
from mmdata.shard_output import shard_output


def _downloaded_dataset(root, samples=12):
    with shard_output(root, 0) as output:
        for row in range(samples):
            key = sample_key(0, row, 100)
            url, caption = f"http://site{row % 3}.test/{row}.jpg", f"caption {row}"
            base = {"key": key, "uid": sample_uid(url, caption), "url": url, "caption": caption}
            if row % 4 == 3:
                output.add({**base, "status": "failed_to_download", "error_message": "HTTP 404",
                            "error_class": "http_404"})
                continue
            buffer = io.BytesIO()
            Image.new("RGB", (40 + 8 * row, 30 + 4 * row), (20 * row, 120, 200)).save(buffer, "JPEG")
            output.add({**base, "status": "success", "width": 64, "height": 64,
                        "original_width": 40 + 8 * row, "original_height": 30 + 4 * row},
                       {"jpg": buffer.getvalue(), "txt": caption.encode()})
        output.commit({"count": samples})


def test_download_only_report_in_chromium(tmp_path):
    require_chromium()
    _downloaded_dataset(tmp_path / "data")
    report = write_report(tmp_path / "data", tmp_path / "report.html")
    page = open_report(report, tmp_path / "report.png")
    assert page["errors"] == []
    assert page["sections"] == [key for key, _ in SECTIONS]
    assert {"scores", "threshold", "duplicates"} <= set(page["not_run"])
    assert "funnel" in page["not_run"]  # the funnel says score, dedup and filter did not run
    assert {image["section"] for image in page["images"]} == {"funnel", "domains", "sizes"}
    assert all(image["width"] > 0 for image in page["images"])
    assert (tmp_path / "report.png").stat().st_size > 10_000
    text = report.read_text()
    assert "site0.test" in text and "http_404" in text
    assert "<script" not in text and "http://site0.test/0.jpg\"" not in text  # nothing fetched, nothing run


def test_report_command_writes_the_same_page(tmp_path):
    from mmdata.cli import main

    _downloaded_dataset(tmp_path / "data")
    assert main(["report", str(tmp_path / "data"), "-o", str(tmp_path / "cli.html")]) == 0
    assert (tmp_path / "cli.html").read_text().count("<section id=") == len(SECTIONS)
    assert main(["report", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.html")]) == 2  # says what to pass
