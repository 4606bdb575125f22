"""mmdata.training: a fixed number of steps gives bitwise the same weights on a quiet machine and on
one with a CPU-burning process beside it; a time cap stops early only with a loud warning."""

import io
import random
import subprocess
import sys

import pytest
import torch
from PIL import Image

import mmdata
from mmdata import layout
from mmdata.score.model import tiny_model_config, write_model_config
from mmdata.shard_output import shard_output
from mmdata.training import TrainConfig, seed_everything, train_clip

COLOURS = {"red": (200, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 210), "yellow": (230, 210, 30)}
MODEL_NAME = "mmdata-test-training-clip"


def make_dataset(root, samples: int):
    """One shard of ``samples`` 24 px squares captioned by their colour."""
    with shard_output(root, 0) as output:
        for row in range(samples):
            name, colour = list(COLOURS.items())[row % len(COLOURS)]
            buffer = io.BytesIO()
            Image.new("RGB", (24, 24), colour).save(buffer, format="JPEG", quality=90)
            key = layout.sample_key(0, row, samples)
            caption = f"a {name} square"
            output.add({"key": key, "uid": f"u{key}", "caption": caption, "status": "success"},
                       {"jpg": buffer.getvalue(), "txt": caption.encode(), "json": b"{}"})
        output.commit({"count": samples, "shard": layout.shard_name(0)})
    return root


def tiny_clip(tmp_path, seed: int = 0):
    """A 16 px, one-layer CLIP with its training transform (random crops: seeded DataLoader workers)."""
    import open_clip

    config = tiny_model_config(embed_dim=16, image_size=16, patch_size=8, width=64, layers=1, context_length=12)
    open_clip.add_model_config(write_model_config(tmp_path / f"{MODEL_NAME}.json", config))
    seed_everything(seed)
    model, preprocess_train, _ = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=None)
    return model, preprocess_train, open_clip.get_tokenizer(MODEL_NAME)


def train_once(tmp_path, data, config):
    model, preprocess, tokenizer = tiny_clip(tmp_path, config.seed)
    dataset = mmdata.stream(data, seed=config.seed, image_transform=preprocess)
    return model, train_clip(model, dataset, tokenizer, config)


def test_same_steps_same_weights_under_cpu_load(tmp_path):
    data = make_dataset(tmp_path / "data", 20)
    config = TrainConfig(steps=7, batch_size=6, learning_rate=1e-3, warmup_steps=2, num_workers=2, threads=2)
    quiet_model, quiet = train_once(tmp_path, data, config)
    # Another process's history of random draws must not matter either.
    torch.rand(1000), random.random()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy_model, busy = train_once(tmp_path, data, config)
        assert burner.poll() is None, "the CPU burner ended before the second run finished"
    finally:
        burner.kill()
        burner.wait()
    assert quiet.steps == busy.steps == 7 and not quiet.stopped_early and not busy.stopped_early
    assert quiet.epoch == busy.epoch == 1  # 2 workers of 10 samples, batches of 6 and 4: 4 steps an epoch
    assert quiet.losses == busy.losses
    quiet_state, busy_state = quiet_model.state_dict(), busy_model.state_dict()
    assert quiet_state.keys() == busy_state.keys()
    assert all(torch.equal(quiet_state[name], busy_state[name]) for name in quiet_state)
    assert not torch.equal(quiet_state["logit_scale"], tiny_clip(tmp_path)[0].state_dict()["logit_scale"])


def test_time_cap_stops_early_loudly(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", 8)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with pytest.warns(RuntimeWarning, match="stopped early"):
        _, result = train_once(tmp_path, data, TrainConfig(steps=50, batch_size=4, num_workers=0, max_seconds=0))
    assert result.steps == 1 and result.stopped_early and result.summary()["stopped_early"]
    assert "WARNING: training stopped early" in capsys.readouterr().err
    # The caller's torch settings come back.
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)


def test_batches_of_one_are_skipped_and_counted(tmp_path):
    data = make_dataset(tmp_path / "data", 5)  # batches of 4 and 1 each epoch
    _, result = train_once(tmp_path, data, TrainConfig(steps=3, batch_size=4, num_workers=0))
    assert (result.steps, result.epoch, result.skipped_batches) == (3, 2, 2)
    assert len(result.losses) == 3 and all(loss > 0 for loss in result.losses)


def test_refuses_what_cannot_train(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="checkpoint path"):
        TrainConfig(steps=1, resume=True)
    data = make_dataset(tmp_path / "data", 3)
    with pytest.raises(ValueError, match="fewer than 3 workers"):
        train_once(tmp_path, data, TrainConfig(steps=1, batch_size=4, num_workers=3))
