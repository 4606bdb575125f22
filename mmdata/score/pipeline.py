"""Score one shard: read its tar, decode and tokenise in CPU threads while the model runs, and write
one score table. Plain classes, no Ray: the actor in :mod:`mmdata.score.actor` only holds one.

Decode and tokenisation of batch k+1..k+P run in a thread pool while batch k is on the model (Pillow
and torch release the GIL). Images travel as uint8 in pinned buffers; the last two steps of
open_clip's eval transform (to-tensor and normalise) run on the device, which is the same arithmetic.
"""

from __future__ import annotations

import io
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from mmdata import layout
from mmdata.atomic import write_parquet
from mmdata.schemas.members import caption_member, image_member
from mmdata.schemas.scores import score_schema
from mmdata.score.model import LoadedClip
from mmdata.shards import ShardFormatError, iter_samples
from mmdata.stats import Stats

# score_error values, prefixes of the message; each has a failed_<reason> counter in the stats
MISSING_IMAGE = "missing_image"
MISSING_CAPTION = "missing_caption"
UNDECODABLE = "undecodable_image"


@dataclass
class ShardScores:
    """One shard's score rows, aligned with the tar's sample order."""

    keys: list[str] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    clip_scores: list[np.ndarray] = field(default_factory=list)  # float32 per batch; failed rows masked later
    image_embeddings: list[np.ndarray] = field(default_factory=list)  # float16 [n, d] per batch
    text_embeddings: list[np.ndarray] = field(default_factory=list)

    def to_table(self, embed_dim: int | None) -> pa.Table:
        errors = pa.array(self.errors, type=pa.string())
        failed = np.array([error is not None for error in self.errors], dtype=bool)
        scores = np.concatenate(self.clip_scores) if self.clip_scores else np.zeros(0, np.float32)
        columns = {
            "key": pa.array(self.keys, type=pa.string()),
            "clip_score": pa.array(scores, type=pa.float32(), mask=failed),
            "score_error": errors,
        }
        if embed_dim is not None:
            for name, parts in (("image_embedding", self.image_embeddings), ("text_embedding", self.text_embeddings)):
                flat = np.concatenate(parts).reshape(-1) if parts else np.zeros(0, np.float16)
                columns[name] = pa.FixedSizeListArray.from_arrays(
                    pa.array(flat, type=pa.float16()), embed_dim, mask=pa.array(failed)
                )
        return pa.table(columns)


class DevicePreprocess:
    """open_clip's eval transform split in two: geometry on the CPU (PIL → uint8 HWC), and the final
    to-tensor + normalise on the device. Transforms that do not end that way run whole on the CPU."""

    def __init__(self, clip: LoadedClip):
        import torch
        from torchvision import transforms

        self.clip = clip
        steps = list(getattr(clip.preprocess, "transforms", []))
        self.split = (
            len(steps) >= 2
            and isinstance(steps[-1], transforms.Normalize)
            and isinstance(steps[-2], transforms.ToTensor)
        )
        if self.split:
            self.cpu_transform = transforms.Compose(steps[:-2])
            shape = (1, 3, 1, 1)
            self.mean = torch.tensor(steps[-1].mean, dtype=torch.float32, device=clip.device).reshape(shape)
            self.std = torch.tensor(steps[-1].std, dtype=torch.float32, device=clip.device).reshape(shape)
        else:
            self.cpu_transform = clip.preprocess
        height, width = clip.provenance["image_size"]
        self.image_shape = (height, width, 3) if self.split else (3, height, width)
        self.buffer_dtype = torch.uint8 if self.split else torch.float32

    def new_buffer(self, batch_size: int):
        import torch

        pin = self.clip.device.startswith("cuda")
        return torch.empty((batch_size, *self.image_shape), dtype=self.buffer_dtype, pin_memory=pin)

    def prepare(self, data: bytes):
        """Decode one stored image into the CPU part's output (uint8 HWC, or the full float CHW)."""
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.load()
            prepared = self.cpu_transform(image)
        array = np.asarray(prepared) if self.split else prepared.numpy()
        if array.shape != self.image_shape:
            raise ValueError(f"preprocessed to shape {array.shape}, expected {self.image_shape}")
        return array

    def to_device(self, buffer, count: int):
        """The batch's pixels as the model's normalised float input, on the device."""
        pixels = buffer[:count].to(self.clip.device, non_blocking=True)
        if not self.split:
            return pixels
        pixels = pixels.permute(0, 3, 1, 2).float().div_(255)
        return pixels.sub_(self.mean).div_(self.std).contiguous()


@dataclass
class _Batch:
    keys: list[str]
    errors: list[str | None]
    buffer_index: int
    image_futures: list[tuple[int, Future]]
    tokens: Future


class ShardScorer:
    """Scores shards with one loaded model; ``score_shard`` maps a tar to a score table + stats."""

    def __init__(
        self,
        clip: LoadedClip,
        *,
        batch_size: int = 256,
        keep_embeddings: bool = True,
        decode_workers: int = 2,
        prefetch_batches: int = 2,
    ):
        self.clip = clip
        self.batch_size = batch_size
        self.keep_embeddings = keep_embeddings
        self.prefetch_batches = prefetch_batches
        self.decode_workers = decode_workers
        self.preprocess = DevicePreprocess(clip)
        self._tokenizer_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="decode")
        self.buffers = [self.preprocess.new_buffer(batch_size) for _ in range(prefetch_batches + 1)]
        self.buffer_arrays = [buffer.numpy() for buffer in self.buffers]  # views decode threads write into
        provenance = dict(clip.provenance, precision=clip.precision)
        self.schema = score_schema(clip.embed_dim if keep_embeddings else None, provenance)

    def score_shard(self, tar_path: layout.Root, output_path: layout.Root, on_progress=None) -> Stats:
        """Score every sample stored in ``tar_path`` (streamed, from a disk or a bucket) and write the
        table whole to ``output_path``.

        ``on_progress`` is called with the cumulative counts after each batch."""
        started = time.perf_counter()
        scores, stats = self.score_samples(iter_samples(tar_path), on_progress)
        write_parquet(scores.to_table(self.clip.embed_dim if self.keep_embeddings else None), output_path, self.schema)
        stats.add("shards_scored")
        stats.seconds = time.perf_counter() - started
        return stats

    def score_samples(self, samples, on_progress=None) -> tuple[ShardScores, Stats]:
        """Score ``(key, members)`` pairs in order, with decode running ahead of the model."""
        scores, stats = ShardScores(), Stats()
        batches = self._batches(samples)
        pending: deque[_Batch] = deque()
        submitted = 0

        def top_up() -> None:
            # At most prefetch + 1 batches are alive (one on the model, the rest decoding) and they
            # are consecutive, so buffer ``submitted % (prefetch + 1)`` is never one still in use.
            nonlocal submitted
            while len(pending) < self.prefetch_batches and (chunk := next(batches, None)) is not None:
                pending.append(self._submit(chunk, submitted % len(self.buffers)))
                submitted += 1

        top_up()
        while pending:
            batch = pending.popleft()
            outputs = self._run_model(batch)
            top_up()  # decode the next batches while the model runs
            self._collect(batch, outputs, scores, stats)  # waits for the model: its buffer is free after
            if on_progress is not None:
                on_progress(dict(stats.counts))
        return scores, stats

    def _batches(self, samples):
        chunk = []
        for sample in samples:
            chunk.append(sample)
            if len(chunk) == self.batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _submit(self, chunk: list, buffer_index: int) -> _Batch:
        buffer = self.buffer_arrays[buffer_index]
        keys, errors, captions, image_futures = [], [], [], []
        for slot, (key, members) in enumerate(chunk):
            keys.append(key)
            image = image_member(members)
            caption = caption_member(members)
            if image is None:
                errors.append(MISSING_IMAGE)
            elif caption is None:
                errors.append(MISSING_CAPTION)
            else:
                errors.append(None)
                image_futures.append((slot, self.pool.submit(self._prepare_into, buffer, slot, image)))
            captions.append(caption.decode("utf-8", "replace") if caption is not None else "")
        tokens = self.pool.submit(self._tokenize, captions)
        return _Batch(keys, errors, buffer_index, image_futures, tokens)

    def _tokenize(self, captions: list[str]):
        # Hugging Face fast tokenizers raise "Already borrowed" when two threads use one at once.
        with self._tokenizer_lock:
            return self.clip.tokenizer(captions)

    def _prepare_into(self, buffer: np.ndarray, slot: int, data: bytes) -> None:
        buffer[slot] = self.preprocess.prepare(data)

    def _run_model(self, batch: _Batch):
        for slot, future in batch.image_futures:
            error = future.exception()
            if error is not None:
                batch.errors[slot] = f"{UNDECODABLE}: {type(error).__name__}: {error}"[:500]
        buffer = self.buffers[batch.buffer_index]
        count = len(batch.keys)
        for slot, message in enumerate(batch.errors):
            if message is not None:
                buffer[slot].zero_()  # failed slots still go through the model; their rows are masked
        pixels = self.preprocess.to_device(buffer, count)
        image_features = self.clip.encode_images(pixels)
        text_features = self.clip.encode_texts(batch.tokens.result())
        clip_scores = (image_features * text_features).sum(dim=-1)
        if self.keep_embeddings:
            return clip_scores, image_features.half(), text_features.half()
        return clip_scores, None, None

    def _collect(self, batch: _Batch, outputs, scores: ShardScores, stats: Stats) -> None:
        clip_scores, image_features, text_features = outputs
        scores.keys.extend(batch.keys)
        scores.errors.extend(batch.errors)
        scores.clip_scores.append(clip_scores.cpu().numpy().astype(np.float32))
        if self.keep_embeddings:
            scores.image_embeddings.append(image_features.cpu().numpy())
            scores.text_embeddings.append(text_features.cpu().numpy())
        stats.add("samples", len(batch.keys))
        for message in batch.errors:
            if message is None:
                stats.add("scored")
            else:
                stats.add(f"failed_{message.split(':', 1)[0]}")

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@dataclass
class ShardOutcome:
    """What scoring one shard did: its stats, and the error that failed it (no table written)."""

    shard: str
    stats: Stats
    error: str | None = None


def score_tar(
    scorer: ShardScorer, shard: str, tar_path: layout.Root, output_path: layout.Root, on_progress=None
) -> ShardOutcome:
    """Score one shard; a tar the safe reader refuses fails the shard (counted), not the job."""
    try:
        return ShardOutcome(shard, scorer.score_shard(tar_path, output_path, on_progress))
    except (ShardFormatError, OSError) as error:
        stats = Stats()
        stats.add("shards_failed")
        return ShardOutcome(shard, stats, f"{tar_path}: {type(error).__name__}: {error}")
