"""``mmdata download INPUT --output DIR``: URL+caption tables to WebDataset shards (img2dataset's layout).

img2dataset's command line works too, as python-fire reads it (``mmdata download --url_list=urls.txt
--output_folder=out --thread_count=64``): every flag of this command defaults to "not typed", so the
library gets only what the user typed, img2dataset's names included, and maps them in one place
(:mod:`mmdata.download.img2dataset_options`).
"""

from __future__ import annotations

import argparse
import ast

from mmdata.cli._defaults import defaults_from
from mmdata.cli._flags import add_execution_flags, add_storage_flag, execution_options, storage_options
from mmdata.download.img2dataset_options import EXTRA_FIRE_OPTIONS, OPTIONS

_OWNERS = ("mmdata.download.config:DownloadConfig", "mmdata.download.inputs:InputSpec",
           "mmdata.download.image:ImageOptions", "mmdata.download.net:FetchPolicy", "mmdata.download.job:RunOptions")
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
_PASSED = ("input", "output_dir", *_OPTIONS, *OPTIONS, *EXTRA_FIRE_OPTIONS)
_FIRE_SYNTAX = """img2dataset's command line as python-fire reads it: --name value or --name=value; a flag
alone (--skip_reencode) is True, --noskip_reencode False; lists as a,b or '["a","b"]'; None for
none. A command that names --url_list or --output_folder gets img2dataset's defaults for what it
leaves out (256 threads, 1 process, no caption column, no retries). Each flag says what it does here."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download URL+caption tables into WebDataset shards with Parquet metadata",
        description="Download the images of a URL+caption table into DIR/00000.tar, 00000.parquet, "
        "00000_stats.json, ... and DIR/manifest.json (written last). Re-running resumes. img2dataset's "
        "command line works as is (see its options below).",
        formatter_class=defaults_from(*_OWNERS),
        argument_default=argparse.SUPPRESS,  # absent unless typed: the library holds every default
    )
    flags = _Flags(parser)
    flags.add("input", nargs="?", help="file or folder (a path or URL) of parquet, csv, tsv, jsonl or txt (or .gz); "
              "img2dataset's --url_list")
    flags.add("--output", "-o", dest="output_dir", metavar="DIR",
              help="dataset folder to write: a local path or a URL (s3://bucket/ds, gs://...); img2dataset's "
              "--output_folder")
    flags.add("--shard-digits", dest="shard_digits", type=int, metavar="N",
              help="digits of shard names, img2dataset's oom_shard_count (default 5, or more when the "
              "input's row count needs them)")
    flags.add("--no-header", action="store_true", help="csv/tsv whose first line is data (use --columns)")
    flags.add("--columns", type=_names, metavar="NAMES", help="names of a headerless file's columns, e.g. caption,url")
    flags.add("--save-additional-columns", type=_names, metavar="NAMES",
              help="input columns to keep in the metadata, a,b")
    flags.add("--skip-reencode", action="store_true", help="keep the original bytes when nothing changes")
    flags.add(
        "--disallowed-header-directives",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
        metavar="NAMES",
        help="X-Robots-Tag directives that opt an image out (default %(library_default)s; '' honours none)",
    )
    flags.add("--allow-network", action="append", metavar="CIDR",
              help="allow addresses in this private/loopback range (repeatable), e.g. 127.0.0.1/32; "
              "python-fire style: --allow_network=127.0.0.1/32,10.0.0.0/8")
    flags.add("--retry-failed", action="store_true", help="re-attempt rows whose failure was transient")
    for flag, name, value_type, text in _VALUE_FLAGS:
        flags.add(flag, dest=name, type=value_type, help=text)
    add_storage_flag(parser)
    add_execution_flags(parser)
    flags.add_fire_options(parser.add_argument_group("img2dataset's options", _FIRE_SYNTAX))
    parser.set_defaults(handler=run)


class _Flags:
    """Adds the command's flags, remembering the option strings taken so img2dataset's spellings
    only add the ones that are free (the shared flags of ``_flags`` share no name with img2dataset)."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self.taken: set[str] = set()

    def add(self, *names: str, target=None, **settings) -> None:
        (target or self.parser).add_argument(*names, **settings)
        self.taken.update(names)

    def add_fire_options(self, group) -> None:
        """One flag per img2dataset option (and --allow_network), valued as python-fire reads it."""
        for name, option in OPTIONS.items():
            if f"--{name}" in self.taken:  # --timeout, --retries: the same flag either way
                continue
            spellings = [f"--{spelling}" for spelling in dict.fromkeys((name, name.replace("_", "-")))]
            spellings = [spelling for spelling in spellings if spelling not in self.taken]
            if option.kind == "bool":
                self.add(*spellings, dest=name, type=fire_value, nargs="?", const=True, metavar="BOOL",
                         help=option.help, target=group)
                self.add(f"--no{name}", dest=name, action="store_const", const=False, help=argparse.SUPPRESS,
                         target=group)
            else:
                self.add(*spellings, dest=name, type=fire_value, metavar="VALUE", help=option.help, target=group)
        for name in EXTRA_FIRE_OPTIONS:
            self.add(f"--{name}", dest=name, type=fire_value, metavar="VALUE", help=argparse.SUPPRESS, target=group)


def run(arguments: argparse.Namespace) -> int:
    from mmdata.download.job import download, summary_text

    typed = {name: getattr(arguments, name) for name in _PASSED if hasattr(arguments, name)}
    manifest = download(**typed, **storage_options(arguments), **execution_options(arguments))
    print(summary_text(manifest))
    return 0


def fire_value(text: str):
    """A value read the way python-fire reads it (img2dataset's command line): a Python literal when
    the text is one (5, 0.5, True, None, [a, b], a,b), bare words inside it taken as strings; else
    the text as typed (a path, a URL, a word)."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return text
    if isinstance(tree.body, ast.BinOp) or isinstance(tree.body, ast.Name) and tree.body.id not in _CONSTANTS:
        return text  # data/urls.txt, or one word: kept exactly as typed
    try:
        return ast.literal_eval(_BareWords().visit(tree))
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return text


_CONSTANTS = ("True", "False", "None")


class _BareWords(ast.NodeTransformer):
    """python-fire's reading of bare words inside a literal: ``[uid, url]`` is ``["uid", "url"]``."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return node if node.id in _CONSTANTS else ast.copy_location(ast.Constant(node.id), node)


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names
