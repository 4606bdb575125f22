"""Settings of one download job: where rows come from, how images are stored and how the web is
fetched (where the shard tasks run is the job's :class:`~mmdata.execution.ExecutionConfig`).

The job's options are the union of three smaller option sets, each validated by its own module
(:class:`InputSpec`, :class:`ImageOptions`, :class:`FetchPolicy`), plus the job's own. Python users
and the CLI pass them flat: :meth:`DownloadConfig.from_options` routes each name to its owner.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

from mmdata import layout
from mmdata.download.image import ImageOptions
from mmdata.download.inputs import InputSpec
from mmdata.download.net import FetchPolicy
from mmdata.storage import Location, location

# Flat option names that differ from the owning dataclass's field name.
_ALIASES = {"input": "path", "allow_network": "allowed_networks"}
# Options added after datasets were first fingerprinted, with the value that leaves the shards as
# they were then: at that value they are left out of the fingerprint, so those datasets still resume.
_LATER_OPTIONS = {
    "input": {"bbox_col": None, "verify_hash": None},
    "image": {"resize_only_if_bigger": False, "upscale_interpolation": "lanczos", "downscale_interpolation": "bicubic",
              "max_image_area": None, "compute_hash": "sha256", "extract_exif": True, "disable_all_reencoding": False},
}


@dataclass(frozen=True, kw_only=True)
class DownloadConfig:
    """One download job: ``threads`` concurrent requests inside each shard; ``retry_failed``
    re-attempts only rows whose failure was transient. ``output_dir`` (and the input) may be URLs;
    ``storage_options`` go to their fsspec filesystem and are never written to the manifest.
    ``shard_digits`` is the width of shard names (img2dataset's ``oom_shard_count``); by default 5, or
    more when the input's row count is known to need more."""

    input: InputSpec
    output_dir: str
    shard_size: int = 10_000
    shard_digits: int | None = None
    image: ImageOptions = field(default_factory=ImageOptions)
    network: FetchPolicy = field(default_factory=FetchPolicy)
    threads: int = 32
    retry_failed: bool = False
    storage_options: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.input, InputSpec):
            raise ValueError(f"input must be an InputSpec, got {type(self.input).__name__}")
        if not self.output_dir:
            raise ValueError("output_dir is required: pass --output DIR")
        root = location(self.output_dir, self.storage_options)
        object.__setattr__(self, "output_dir", root.url)
        if root.is_file():
            raise ValueError(f"output {self.output_dir!r} exists and is not a folder: pass a folder path")
        if self.shard_digits is not None and (not isinstance(self.shard_digits, int) or self.shard_digits < 1):
            raise ValueError(f"shard_digits must be a positive integer, got {self.shard_digits!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"shard_size must be a positive integer, got {self.shard_size!r}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")
        if self.input.bbox_col is not None and self.image.disable_all_reencoding:
            raise ValueError("bbox_col blurs the boxes, which needs the image re-encoded: "
                             "drop disable_all_reencoding (or bbox_col)")

    @classmethod
    def from_options(cls, **options) -> "DownloadConfig":
        """Build a config from flat options (``input=..., output_dir=..., image_size=..., timeout=...``)."""
        owners = {InputSpec: {}, ImageOptions: {}, FetchPolicy: {}, cls: {}}
        names = {owner: {f.name for f in dataclasses.fields(owner)} for owner in owners}
        for name, value in options.items():
            target = _ALIASES.get(name, name)
            for owner in (cls, InputSpec, ImageOptions, FetchPolicy):
                if target in names[owner] and target not in ("input", "image", "network"):
                    owners[owner][target] = value
                    break
            else:
                known = sorted(set().union(*names.values()) - {"path", "input", "image", "network"} | {"input"})
                raise ValueError(f"unknown download option {name!r}; known options: {', '.join(known)}")
        if owners[cls].get("storage_options"):
            owners[InputSpec]["storage_options"] = owners[cls]["storage_options"]
        if "path" not in owners[InputSpec]:
            raise ValueError("input is required: pass the path of a file or folder of URL+caption tables")
        return cls(
            input=InputSpec(**owners[InputSpec]),
            image=ImageOptions(**owners[ImageOptions]),
            network=FetchPolicy(**owners[FetchPolicy]),
            **owners[cls],
        )

    @property
    def root(self) -> Location:
        """The output dataset folder, on its filesystem."""
        return layout.dataset(self.output_dir, self.storage_options)

    def to_dict(self) -> dict:
        """The options as plain JSON values, for the manifest (storage options left out: they may hold secrets)."""
        options = dataclasses.asdict(self)
        options.pop("storage_options")
        options["input"].pop("storage_options", None)
        return _finite(json.loads(json.dumps(options, default=_plain)))

    def fingerprint(self) -> str:
        """Hash of the options that shape the stored shards; a resume must not mix shards of two settings."""
        options = self.to_dict()
        shaping = {"input": options["input"], "shard_size": self.shard_size, "image": options["image"]}
        for group, defaults in _LATER_OPTIONS.items():
            for name, default in defaults.items():
                if shaping[group][name] == default:
                    del shaping[group][name]
        if self.shard_digits not in (None, layout.SHARD_DIGITS):  # so earlier datasets' fingerprints stay valid
            shaping["shard_digits"] = self.shard_digits
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def _finite(value):
    """Strict JSON has no infinity: an unlimited bound (``max_aspect_ratio=inf``) is written as null."""
    if isinstance(value, dict):
        return {name: _finite(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _plain(value):
    if isinstance(value, (set, frozenset)):
        return sorted(map(str, value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)
