"""``mmdata download`` and ``mmdata stats`` as a user types them."""

from __future__ import annotations

import io
import json
import uuid

from download_checks import check_dataset
from PIL import Image

from mmdata import layout
from mmdata.cli import main


def test_download_headerless_tsv_then_stats(http_server, ray_local, tmp_path, capsys):
    run = uuid.uuid4().hex[:8]
    rows = [
        {"url": http_server.url(f"/img/cli-{run}-{index}.jpg?w=120&h=80"), "caption": f"a \"cc3m\" caption {index}"}
        for index in range(5)
    ]
    rows.append({"url": http_server.url("/status/404"), "caption": "gone"})
    source = tmp_path / "cc3m.tsv"  # CC3M's layout: caption<TAB>url, no header; plus a source column
    source.write_text(
        "".join(f"{row['caption']}\t{row['url']}\tsrc-{i}\n" for i, row in enumerate(rows)), encoding="utf-8"
    )
    output = tmp_path / "out"

    code = main([
        "download", str(source), "--output", str(output), "--no-header", "--columns", "caption,url,source",
        "--save-additional-columns", "source", "--shard-size", "4", "--image-size", "32", "--resize-mode",
        "center_crop", "--encode-format", "png", "--workers", "2", "--threads", "4", "--retries", "0",
        "--allow-network", "10.0.0.0/8", "--allow-network", "127.0.0.1/32", "--user-agent-token", "mmdatacli",
    ])
    printed = capsys.readouterr().out

    assert code == 0
    by_key, samples = check_dataset(output, rows, 4)
    assert [by_key[key]["source"] for key in sorted(by_key)] == [f"src-{index}" for index in range(6)]
    for members in samples.values():
        assert Image.open(io.BytesIO(members["png"])).size == (32, 32)
    manifest = json.loads(layout.manifest_path(output).read_text())
    assert manifest["options"]["network"]["allowed_networks"] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert manifest["options"]["input"]["columns"] == ["caption", "url", "source"]
    assert "6 samples in 2 shards: 5 stored" in printed
    assert "http_404" in printed

    assert main(["stats", str(output)]) == 0
    summary = capsys.readouterr().out
    assert summary.splitlines()[0] == printed.splitlines()[0]
    assert "failed_to_download" in summary and "http_404" in summary
    assert summary.rstrip().endswith("job complete (manifest.json written)")


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    source = tmp_path / "urls.parquet"
    assert main(["download", str(source), "--output", str(tmp_path / "o"), "--resize-mode", "stretch"]) == 2
    assert "resize_mode must be one of" in capsys.readouterr().err
    assert main(["download", str(tmp_path / "nothing.csv"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["stats", str(tmp_path)]) == 2
    assert "no complete shard" in capsys.readouterr().err
