"""A self-contained HTML page of search hits: each image inlined from its shard's tar, with the
similarity, key, shard and caption under it. One file, no external requests: open it anywhere."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Sequence

from mmdata import layout
from mmdata.atomic import atomic_file
from mmdata.shards import SampleSpan, ShardFormatError, read_sample

_MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}


def write_hits_html(root: str | os.PathLike, hits: Sequence, output: str | os.PathLike, *, title: str) -> Path:
    """Write ``hits`` (:class:`mmdata.search.query.Hit`) of dataset ``root`` as a grid to ``output``."""
    cells = [_cell(Path(root), hit) for hit in hits]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 1em; }}
figure {{ margin: 0; border: 1px solid #ddd; padding: .5em; }}
img {{ width: 100%; height: 180px; object-fit: contain; background: #f4f4f4; }}
figcaption {{ font-size: .85em; overflow-wrap: anywhere; }}
.missing {{ height: 180px; display: flex; align-items: center; justify-content: center; background: #fee; }}
</style></head>
<body><h1>{html.escape(title)}</h1><p>{len(hits)} hits</p>
<div class="grid">
{"".join(cells)}
</div></body></html>
"""
    output = Path(output)
    with atomic_file(output, "w") as handle:
        handle.write(page)
    return output


def _cell(root: Path, hit) -> str:
    picture = _image_tag(root, hit)
    return (
        f'<figure>{picture}<figcaption><b>{hit.similarity:.3f}</b> · {html.escape(hit.key)} · shard '
        f"{html.escape(hit.shard)}<br>{html.escape(hit.caption or '')}</figcaption></figure>\n"
    )


def _image_tag(root: Path, hit) -> str:
    if hit.tar_offset is None or hit.tar_size is None:
        return '<div class="missing">no image stored</div>'
    try:
        with open(layout.tar_path(root, hit.shard), "rb") as handle:
            _, members = read_sample(handle, SampleSpan(hit.tar_offset, hit.tar_size))
    except (OSError, ShardFormatError) as error:
        return f'<div class="missing">{html.escape(str(error))}</div>'
    for extension, data in members.items():
        mime = _MIME.get(extension.lower())
        if mime:
            encoded = base64.b64encode(data).decode("ascii")
            return f'<img alt="{html.escape(hit.key)}" src="data:{mime};base64,{encoded}">'
    return '<div class="missing">no image member</div>'
