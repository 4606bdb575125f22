"""Counters that add up: one JSON per shard or task, summed by the driver."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stats:
    """Named counts plus wall time; ``a + b`` adds both, so per-shard stats sum to the job's."""

    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, name: str, amount: int = 1) -> None:
        self.counts[name] += amount

    def __add__(self, other: "Stats") -> "Stats":
        return Stats(self.counts + other.counts, self.seconds + other.seconds)

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)

    def to_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "seconds": round(self.seconds, 3)}

    @classmethod
    def from_dict(cls, payload: dict) -> "Stats":
        return cls(Counter(payload.get("counts", {})), float(payload.get("seconds", 0.0)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Stats":
        return cls.from_dict(json.loads(Path(path).read_text()))
