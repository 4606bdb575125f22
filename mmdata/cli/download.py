"""``mmdata download INPUT --output DIR``: URL+caption tables to WebDataset shards (img2dataset's layout)."""

from __future__ import annotations

import argparse

# Flags that carry a value, in the order of ``--help``: (flag, option name, type, help).
_VALUE_FLAGS = (
    ("--input-format", "input_format", str, "parquet|csv|tsv|jsonl|txt (default: from the extension)"),
    ("--url-col", "url_col", str, "column holding the image URL (default url)"),
    ("--caption-col", "caption_col", str, "column holding the caption (default caption)"),
    ("--shard-size", "shard_size", int, "rows per shard (default 10000)"),
    ("--image-size", "image_size", int, "output size in pixels (default 256)"),
    ("--resize-mode", "resize_mode", str, "no|border|keep_ratio|keep_ratio_largest|center_crop (default border)"),
    ("--encode-format", "encode_format", str, "jpg|png|webp (default jpg)"),
    ("--encode-quality", "encode_quality", int, "jpg/webp quality, png zlib level 0-9 (default 95)"),
    ("--min-image-size", "min_image_size", int, "refuse images whose shorter side is smaller (default 0)"),
    ("--max-aspect-ratio", "max_aspect_ratio", float, "refuse images more elongated than this (default no limit)"),
    ("--max-image-pixels", "max_image_pixels", int, "refuse images declaring more pixels, before decoding"),
    ("--timeout", "timeout", float, "deadline in seconds for a whole request, body included"),
    ("--retries", "retries", int, "re-attempts of transient failures, with exponential backoff and jitter"),
    ("--max-bytes", "max_bytes", int, "largest body accepted, enforced while streaming"),
    ("--max-redirects", "max_redirects", int, "redirect hops followed, each one checked again"),
    ("--max-per-host", "max_per_host", int, "concurrent requests to one host, per worker"),
    ("--user-agent-token", "user_agent_token", str, "token added to the User-Agent header"),
    ("--workers", "workers", int, "concurrent shards (default: the CPU count)"),
    ("--threads", "threads", int, "concurrent requests inside each shard (default 32)"),
    ("--executor", "executor", str, "ray (default: a local Ray, or --ray-address) or processes (a local pool, "
     "no cluster start-up)"),
    ("--ray-address", "ray_address", str, "join this Ray cluster instead of starting a local one"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download URL+caption tables into WebDataset shards with Parquet metadata",
        description="Download the images of a URL+caption table into DIR/00000.tar, 00000.parquet, "
        "00000_stats.json, ... and DIR/manifest.json (written last). Re-running resumes.",
    )
    parser.add_argument("input", help="file or folder of parquet, csv, tsv, jsonl or txt (optionally .gz)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="dataset folder to write")
    parser.add_argument("--no-header", action="store_true", help="csv/tsv whose first line is data (use --columns)")
    parser.add_argument("--columns", type=_names, metavar="NAMES", help="names of a headerless file's columns, e.g. caption,url")
    parser.add_argument("--save-additional-columns", type=_names, metavar="NAMES", help="input columns to keep in the metadata, a,b")
    parser.add_argument("--skip-reencode", action="store_true", help="keep the original bytes when nothing changes")
    parser.add_argument(
        "--disallowed-header-directives",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
        metavar="NAMES",
        help="X-Robots-Tag directives that opt an image out (default noai,noimageai,noindex,noimageindex; "
        "'' honours none)",
    )
    parser.add_argument(
        "--allow-network",
        action="append",
        metavar="CIDR",
        help="allow addresses in this private/loopback range (repeatable), e.g. 127.0.0.1/32",
    )
    parser.add_argument("--retry-failed", action="store_true", help="re-attempt rows whose failure was transient")
    for flag, name, value_type, text in _VALUE_FLAGS:
        parser.add_argument(flag, dest=name, type=value_type, help=text)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.download.job import download, summary_text

    options = {name: getattr(arguments, name) for _, name, _, _ in _VALUE_FLAGS}
    options.update(
        input=arguments.input,
        output_dir=arguments.output,
        no_header=arguments.no_header,
        columns=arguments.columns,
        save_additional_columns=arguments.save_additional_columns,
        skip_reencode=arguments.skip_reencode,
        disallowed_header_directives=arguments.disallowed_header_directives,
        allow_network=arguments.allow_network,
        retry_failed=arguments.retry_failed,
    )
    # Options left unset keep the library's defaults.
    manifest = download(**{name: value for name, value in options.items() if value is not None})
    print(summary_text(manifest))
    return 0


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names
