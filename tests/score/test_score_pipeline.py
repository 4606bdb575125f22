"""ShardScorer without Ray: scores equal open_clip's own computation; failures are rows."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from score_data import build_dataset, image_bytes, reference_scores, shard_output

from mmdata import layout
from mmdata.schemas.scores import PROVENANCE_KEY
from mmdata.score.model import load_clip
from mmdata.score.pipeline import ShardScorer
from mmdata.shards import iter_samples

TOLERANCE = 0.005


def _save(form: str, state: dict, folder) -> str:
    if form == "state_dict":
        path = folder / "plain.pt"
        torch.save(state, path)
    elif form == "training_checkpoint":
        path = folder / "epoch_1.pt"
        torch.save({"epoch": 1, "state_dict": {f"module.{name}": tensor for name, tensor in state.items()}}, path)
    else:
        path = folder / "weights.safetensors"
        save_file({name: tensor.contiguous() for name, tensor in state.items()}, path)
    return str(path)


@pytest.mark.parametrize("form", ["state_dict", "training_checkpoint", "safetensors"])
def test_scores_equal_open_clip_reference(form, tiny_config, tiny_state, tiny_checkpoint, tmp_path):
    root = tmp_path / "data"
    keys = build_dataset(root, shards=1, per_shard=9)
    checkpoint = _save(form, tiny_state, tmp_path)
    # batch 2 with prefetch 2: the 3 pinned buffers are reused several times within the shard
    scorer = ShardScorer(load_clip(str(tiny_config), checkpoint), batch_size=2, decode_workers=2, prefetch_batches=2)
    output = tmp_path / "scores" / "00000.parquet"
    stats = scorer.score_shard(layout.tar_path(root, 0), output)
    scorer.close()

    expected = reference_scores(tiny_config, tiny_checkpoint, layout.tar_path(root, 0))
    table = pq.read_table(output)
    assert table.column("key").to_pylist() == keys == list(expected)
    got = np.array(table.column("clip_score").to_pylist())
    want = np.array([expected[key] for key in keys])
    assert np.abs(got - want).max() < TOLERANCE
    assert np.ptp(want) > 20 * TOLERANCE  # the samples differ, so a mix-up of rows would show
    assert stats["samples"] == stats["scored"] == 9 and stats["shards_scored"] == 1

    # embeddings: float16, unit length, and their dot product is the score
    image = np.array(table.column("image_embedding").to_pylist(), dtype=np.float32)
    text = np.array(table.column("text_embedding").to_pylist(), dtype=np.float32)
    assert table.schema.field("image_embedding").type.value_type == "halffloat"
    assert np.allclose(np.linalg.norm(image, axis=1), 1, atol=2e-3)
    assert np.abs((image * text).sum(axis=1) - want).max() < TOLERANCE
    assert PROVENANCE_KEY in table.schema.metadata


def test_reference_check_would_catch_a_preprocessing_slip(tiny_config, tiny_checkpoint, tmp_path):
    """Scoring without the mean/std normalisation moves scores by more than the tolerance."""
    root = tmp_path / "data"
    build_dataset(root, shards=1, per_shard=6)
    clip = load_clip(str(tiny_config), str(tiny_checkpoint))
    scorer = ShardScorer(clip, batch_size=4, decode_workers=1)
    scorer.preprocess.mean.zero_()
    scorer.preprocess.std.fill_(1.0)
    scores, _ = scorer.score_samples(iter_samples(layout.tar_path(root, 0)))
    expected = reference_scores(tiny_config, tiny_checkpoint, layout.tar_path(root, 0))
    got = np.concatenate(scores.clip_scores)
    assert np.abs(got - np.array(list(expected.values()))).max() > TOLERANCE


def test_failures_are_rows_with_reasons_and_counted(tiny_config, tiny_checkpoint, tmp_path):
    root = tmp_path / "data"
    rgba = io.BytesIO()
    Image.new("RGBA", (70, 50), (10, 200, 10, 128)).save(rgba, format="PNG")
    gray = io.BytesIO()
    Image.new("L", (50, 90), 120).save(gray, format="JPEG")
    samples = [
        ("000", {"png": rgba.getvalue(), "txt": b"a green square"}),
        ("001", {"jpg": gray.getvalue(), "txt": b"a grey square"}),
        ("002", {"jpg": b"\xff\xd8\xff\xe0 truncated jpeg", "txt": b"broken"}),
        ("003", {"txt": b"caption without an image"}),
        ("004", {"jpg": image_bytes((200, 0, 0), (64, 64), seed=1)}),
        ("005", {"webp": image_bytes((0, 0, 200), (64, 80), seed=2, image_format="WEBP"), "txt": "blå".encode()}),
    ]
    with shard_output(root, 0) as shard:
        for key, members in samples:
            shard.add({"key": key, "uid": key, "status": "success"}, members)
        shard.commit({"shard": "00000"})
    scorer = ShardScorer(load_clip(str(tiny_config), str(tiny_checkpoint)), batch_size=4, decode_workers=2)
    output = tmp_path / "scores.parquet"
    stats = scorer.score_shard(layout.tar_path(root, 0), output)
    table = pq.read_table(output).to_pylist()
    by_key = {row["key"]: row for row in table}
    assert [row["key"] for row in table] == [key for key, _ in samples]
    for key in ("000", "001", "005"):
        assert by_key[key]["score_error"] is None and -1 <= by_key[key]["clip_score"] <= 1
        assert by_key[key]["image_embedding"] is not None
    assert by_key["002"]["score_error"].startswith("undecodable_image:")
    assert by_key["003"]["score_error"] == "missing_image"
    assert by_key["004"]["score_error"] == "missing_caption"
    for key in ("002", "003", "004"):
        assert by_key[key]["clip_score"] is None and by_key[key]["image_embedding"] is None
    assert stats.counts == {
        "samples": 6, "scored": 3, "failed_undecodable_image": 1, "failed_missing_image": 1,
        "failed_missing_caption": 1, "shards_scored": 1,
    }
    assert stats["samples"] == sum(
        count for name, count in stats.counts.items() if name == "scored" or name.startswith("failed_")
    )


def test_no_embeddings_keeps_only_scores(tiny_config, tiny_checkpoint, tmp_path):
    root = tmp_path / "data"
    build_dataset(root, shards=1, per_shard=3)
    scorer = ShardScorer(load_clip(str(tiny_config), str(tiny_checkpoint)), batch_size=8, keep_embeddings=False)
    scorer.score_shard(layout.tar_path(root, 0), tmp_path / "s.parquet")
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.column_names == ["key", "clip_score", "score_error"]
    assert table.column("clip_score").null_count == 0
