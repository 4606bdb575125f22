"""The input of the whole-loop tests (executors agree, s3 loop): 20 images, an exact duplicate of the
first, a palette GIF and a 404, served by the test image server (the ``server`` fixture of conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path


def loop_input(server, folder: Path, prefix: str) -> Path:
    names = [f"{prefix}-{index:02d}" for index in range(20)]
    urls = [server.url(f"/img/{name}.jpg?w=96&h=72") for name in names]
    urls += [server.url(f"/img/{names[0]}.jpg?w=96&h=72&copy=1")]  # the same bytes again: an exact duplicate
    urls += [server.url(f"/img/{prefix}-gif.gif?w=40&h=40&mode=P"), server.url("/status/404")]
    path = folder / "urls.jsonl"
    path.write_text("".join(json.dumps({"url": url, "caption": f"picture {i}"}) + "\n" for i, url in enumerate(urls)))
    return path
