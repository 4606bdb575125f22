"""The actor that holds one CLIP model and scores whole shards with it (on any executor).

The model is loaded in the actor, and the hardware is probed there: ``device="auto"`` becomes cuda
only if this process sees a GPU. Torch and decode threads are sized from the CPUs the actor was given.
"""

from __future__ import annotations

from mmdata.score.config import ScoreConfig
from mmdata.score.model import ModelSpec
from mmdata.score.pipeline import ShardOutcome, ShardScorer, score_tar
from mmdata.storage import Location


class ScoreActor:
    """Scores shards with one model; ``setup`` loads it (also called lazily after an actor restart)."""

    def __init__(self, spec: ModelSpec, config: ScoreConfig, cpus: int = 1):
        self.spec = spec
        self.config = config
        self.cpus = max(1, cpus)
        self.scorer: ShardScorer | None = None

    def setup(self) -> dict:
        """Load the model; returns its provenance and how this actor runs it."""
        if self.scorer is None:
            import torch

            from mmdata.score.model import load_clip

            cpus = self.cpus
            config = self.config
            clip = load_clip(self.spec, device=config.device, precision=config.precision)
            # On CPU the model wants every core; on GPU the cores are for decoding.
            torch.set_num_threads(cpus if clip.device == "cpu" else max(1, cpus // 4))
            self.scorer = ShardScorer(
                clip,
                batch_size=config.batch_size,
                keep_embeddings=not config.no_embeddings,
                decode_workers=config.decode_workers or cpus,
                prefetch_batches=config.prefetch_batches,
            )
        clip = self.scorer.clip
        return {
            "provenance": clip.provenance,
            "device": clip.device,
            "precision": clip.precision,
            "torch_threads": _torch_threads(),
            "decode_workers": self.scorer.decode_workers,
        }

    def score(self, shard: str, tar_path: Location, output_path: Location, reporter=None) -> ShardOutcome:
        """Score one shard; ``reporter`` (the executor's progress feed) gets live counts."""
        self.setup()
        outcome = score_tar(self.scorer, shard, tar_path, output_path, reporter)
        if reporter is not None:
            reporter(dict(outcome.stats.counts), force=True)
        return outcome


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
