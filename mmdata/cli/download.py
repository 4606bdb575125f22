"""``mmdata download INPUT --output DIR``: URL+caption tables to WebDataset shards (img2dataset's layout)."""

from __future__ import annotations

import argparse

from mmdata.cli._defaults import defaults_from
from mmdata.cli._flags import add_execution_flags, add_storage_flag, execution_options, given, storage_options

_OWNERS = ("mmdata.download.config:DownloadConfig", "mmdata.download.inputs:InputSpec",
           "mmdata.download.image:ImageOptions", "mmdata.download.net:FetchPolicy")
# Flags that carry a value, in the order of ``--help``: (flag, option name, type, help).
_VALUE_FLAGS = (
    ("--input-format", "input_format", str, "parquet|csv|tsv|jsonl|txt (default: from the extension)"),
    ("--url-col", "url_col", str, "column holding the image URL (default %(library_default)s)"),
    ("--caption-col", "caption_col", str, "column holding the caption (default %(library_default)s)"),
    ("--shard-size", "shard_size", int, "rows per shard (default %(library_default)s)"),
    ("--image-size", "image_size", int, "output size in pixels (default %(library_default)s)"),
    ("--resize-mode", "resize_mode", str,
     "no|border|keep_ratio|keep_ratio_largest|center_crop (default %(library_default)s)"),
    ("--encode-format", "encode_format", str, "jpg|png|webp (default %(library_default)s)"),
    ("--encode-quality", "encode_quality", int, "jpg/webp quality, png zlib level 0-9 (default %(library_default)s)"),
    ("--min-image-size", "min_image_size", int,
     "refuse images whose shorter side is smaller (default %(library_default)s)"),
    ("--max-aspect-ratio", "max_aspect_ratio", float, "refuse images more elongated than this (default no limit)"),
    ("--max-image-pixels", "max_image_pixels", int,
     "refuse images declaring more pixels, before decoding (default %(library_default)s)"),
    ("--timeout", "timeout", float,
     "deadline in seconds for a whole request, body included (default %(library_default)s)"),
    ("--retries", "retries", int,
     "re-attempts of transient failures, with exponential backoff and jitter (default %(library_default)s)"),
    ("--max-bytes", "max_bytes", int, "largest body accepted, enforced while streaming (default %(library_default)s)"),
    ("--max-redirects", "max_redirects", int,
     "redirect hops followed, each one checked again (default %(library_default)s)"),
    ("--max-per-host", "max_per_host", int, "concurrent requests to one host, per worker (default: no limit)"),
    ("--user-agent-token", "user_agent_token", str, "token added to the User-Agent header"),
    ("--threads", "threads", int, "concurrent requests inside each shard (default %(library_default)s)"),
)
# Flags without a value, and the options of the flags above: what the library is given when set.
_SWITCHES = ("no_header", "skip_reencode", "retry_failed", "shard_digits")
_OPTIONS = (*(name for _, name, _, _ in _VALUE_FLAGS), *_SWITCHES, "columns", "save_additional_columns",
            "disallowed_header_directives", "allow_network")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download URL+caption tables into WebDataset shards with Parquet metadata",
        description="Download the images of a URL+caption table into DIR/00000.tar, 00000.parquet, "
        "00000_stats.json, ... and DIR/manifest.json (written last). Re-running resumes.",
        formatter_class=defaults_from(*_OWNERS),
    )
    parser.add_argument("input", help="file or folder (a path or URL) of parquet, csv, tsv, jsonl or txt (or .gz)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR",
                        help="dataset folder to write: a local path or a URL (s3://bucket/ds, gs://...)")
    parser.add_argument("--shard-digits", dest="shard_digits", type=int, metavar="N",
                        help="digits of shard names, img2dataset's oom_shard_count (default 5, or more when the "
                        "input's row count needs them)")
    parser.add_argument("--no-header", action="store_true", default=None,
                        help="csv/tsv whose first line is data (use --columns)")
    parser.add_argument("--columns", type=_names, metavar="NAMES",
                        help="names of a headerless file's columns, e.g. caption,url")
    parser.add_argument("--save-additional-columns", type=_names, metavar="NAMES",
                        help="input columns to keep in the metadata, a,b")
    parser.add_argument("--skip-reencode", action="store_true", default=None,
                        help="keep the original bytes when nothing changes")
    parser.add_argument(
        "--disallowed-header-directives",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
        metavar="NAMES",
        help="X-Robots-Tag directives that opt an image out (default %(library_default)s; '' honours none)",
    )
    parser.add_argument(
        "--allow-network",
        action="append",
        metavar="CIDR",
        help="allow addresses in this private/loopback range (repeatable), e.g. 127.0.0.1/32",
    )
    parser.add_argument("--retry-failed", action="store_true", default=None,
                        help="re-attempt rows whose failure was transient")
    for flag, name, value_type, text in _VALUE_FLAGS:
        parser.add_argument(flag, dest=name, type=value_type, help=text)
    add_storage_flag(parser)
    add_execution_flags(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.download.job import download, summary_text

    manifest = download(input=arguments.input, output_dir=arguments.output, **given(arguments, _OPTIONS),
                        **storage_options(arguments), **execution_options(arguments))
    print(summary_text(manifest))
    return 0


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names
