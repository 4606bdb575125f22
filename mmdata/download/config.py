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
from pathlib import Path

from mmdata.download.image import ImageOptions
from mmdata.download.inputs import InputSpec
from mmdata.download.net import FetchPolicy
from mmdata.layout import local_path

# Flat option names that differ from the owning dataclass's field name.
_ALIASES = {"input": "path", "allow_network": "allowed_networks"}


@dataclass(frozen=True, kw_only=True)
class DownloadConfig:
    """One download job: ``threads`` concurrent requests inside each shard; ``retry_failed``
    re-attempts only rows whose failure was transient."""

    input: InputSpec
    output_dir: str
    shard_size: int = 10_000
    image: ImageOptions = field(default_factory=ImageOptions)
    network: FetchPolicy = field(default_factory=FetchPolicy)
    threads: int = 32
    retry_failed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.input, InputSpec):
            raise ValueError(f"input must be an InputSpec, got {type(self.input).__name__}")
        if not self.output_dir:
            raise ValueError("output_dir is required: pass --output DIR")
        object.__setattr__(self, "output_dir", str(local_path(self.output_dir)))
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ValueError(f"output {self.output_dir!r} exists and is not a folder: pass a folder path")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"shard_size must be a positive integer, got {self.shard_size!r}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")

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
        if "path" not in owners[InputSpec]:
            raise ValueError("input is required: pass the path of a file or folder of URL+caption tables")
        return cls(
            input=InputSpec(**owners[InputSpec]),
            image=ImageOptions(**owners[ImageOptions]),
            network=FetchPolicy(**owners[FetchPolicy]),
            **owners[cls],
        )

    def to_dict(self) -> dict:
        """The options as plain JSON values, for the manifest."""
        return _finite(json.loads(json.dumps(dataclasses.asdict(self), default=_plain)))

    def fingerprint(self) -> str:
        """Hash of the options that shape the stored shards; a resume must not mix shards of two settings."""
        shaping = {"input": self.to_dict()["input"], "shard_size": self.shard_size, "image": self.to_dict()["image"]}
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
