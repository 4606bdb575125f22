"""A self-contained HTML page of search hits: each image inlined from its shard's tar, with the
similarity, key, shard and caption under it. One file, no external requests: open it anywhere. The
dataset and the page may each be a local path or a URL; each image is one ranged read of its tar."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Sequence

from mmdata import layout
from mmdata.atomic import atomic_file
from mmdata.shards import ShardFormatError, samples_in_range
from mmdata.storage import Location, location

_MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}


def write_hits_html(root: layout.Root, hits: Sequence, output: str | os.PathLike | Location, *, title: str,
                    storage_options: dict | None = None) -> Path | Location:
    """Write ``hits`` (:class:`mmdata.search.query.Hit`) of dataset ``root`` as a grid to ``output``
    (a path, returned as a Path, or a URL, returned as a Location)."""
    root = layout.dataset(root, storage_options)
    cells = [_cell(root, hit) for hit in hits]
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
    output = location(output, storage_options)
    with atomic_file(output, "w") as handle:
        handle.write(page)
    return output.local_path() if output.is_local else output


def _cell(root: Location, hit) -> str:
    picture = _image_tag(root, hit)
    return (
        f'<figure>{picture}<figcaption><b>{hit.similarity:.3f}</b> · {html.escape(hit.key)} · shard '
        f"{html.escape(hit.shard)}<br>{html.escape(hit.caption or '')}</figcaption></figure>\n"
    )


def _image_tag(root: Location, hit) -> str:
    if hit.tar_offset is None or hit.tar_size is None:
        return '<div class="missing">no image stored</div>'
    try:
        blob = layout.tar_path(root, hit.shard).read_range(hit.tar_offset, hit.tar_size)
        samples = samples_in_range(blob) if len(blob) == hit.tar_size else []
        if len(samples) != 1:
            raise ShardFormatError(f"byte range at offset {hit.tar_offset} of shard {hit.shard} is not one sample")
    except (OSError, ShardFormatError) as error:
        return f'<div class="missing">{html.escape(str(error))}</div>'
    _, members = samples[0]
    for extension, data in members.items():
        mime = _MIME.get(extension.lower())
        if mime:
            encoded = base64.b64encode(data).decode("ascii")
            return f'<img alt="{html.escape(hit.key)}" src="data:{mime};base64,{encoded}">'
    return '<div class="missing">no image member</div>'
