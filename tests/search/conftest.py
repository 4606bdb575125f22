"""A dataset of drawn shapes scored by a tiny CLIP trained here on the same kind of pictures.

Training sees fresh renders of every (colour, shape) scene; the dataset holds other renders, so
retrieval tests measure what the model learned, not what it memorised.
"""

import json
import os

# Under CPU contention, OpenMP threads that spin while waiting starve each other (torch and faiss
# ran 5-20x slower on the shared test machine); passive waiting costs nothing on a quiet one.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmdata import layout
from mmdata.shard_output import shard_output
from mmdata.synthetic import COLOURS, SHAPES, Scene, draw_scene, encode

TRAIN_STEPS = 300
RENDERS_PER_SCENE = 6
IMAGE_PX = 64


@dataclass
class ShapesDataset:
    root: Path
    config_path: Path
    checkpoint: Path
    captions: dict[str, str]  # key -> caption of every stored sample


def scenes() -> list[Scene]:
    return [Scene(1, colour, shape, "white", "plain") for colour in COLOURS for shape in SHAPES]


def caption_of(scene: Scene) -> str:
    return f"a {scene.colour} {scene.shape}"


def train_tiny_clip(folder: Path) -> tuple[Path, Path]:
    """Train a tiny open_clip model with ClipLoss on rendered shapes; returns (config JSON, checkpoint)."""
    import open_clip
    import torch

    from mmdata.score.model import load_clip, tiny_model_config, write_model_config

    config = tiny_model_config(embed_dim=32, image_size=32, patch_size=8, width=64, layers=2, context_length=16)
    config_path = write_model_config(folder / "shapes-clip.json", config)
    clip = load_clip(str(config_path), None, device="cpu")
    model, preprocess, tokenizer = clip.model, clip.preprocess, clip.tokenizer
    all_scenes = scenes()
    rng = random.Random(0)
    pool = torch.stack([
        torch.stack([preprocess(draw_scene(scene, IMAGE_PX, IMAGE_PX, rng)) for scene in all_scenes])
        for _ in range(RENDERS_PER_SCENE)
    ])
    tokens = tokenizer([caption_of(scene) for scene in all_scenes])
    loss_function = open_clip.ClipLoss()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    columns = torch.arange(len(all_scenes))
    model.train()
    for _ in range(TRAIN_STEPS):
        images = pool[torch.randint(0, RENDERS_PER_SCENE, (len(all_scenes),), generator=generator), columns]
        image_features, text_features, logit_scale = model(images, tokens)[:3]
        loss = loss_function(image_features, text_features, logit_scale)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    checkpoint = folder / "shapes-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return config_path, checkpoint


def write_shapes_dataset(root: Path, *, shards: int = 2) -> dict[str, str]:
    """Every scene once, drawn afresh (seed 99), PNG, spread over ``shards`` shards."""
    all_scenes = scenes()
    rng = random.Random(99)
    per_shard = -(-len(all_scenes) // shards)
    captions = {}
    for shard in range(shards):
        with shard_output(root, shard) as output:
            chunk = all_scenes[shard * per_shard:(shard + 1) * per_shard]
            for row, scene in enumerate(chunk):
                key = layout.sample_key(shard, row, per_shard)
                caption = caption_of(scene)
                url = f"http://127.0.0.1/{key}.png"
                data = encode(draw_scene(scene, IMAGE_PX, IMAGE_PX, rng), "png")
                output.add(
                    {"key": key, "uid": layout.sample_uid(url, caption), "url": url, "caption": caption,
                     "status": "success"},
                    {"png": data, "txt": caption.encode(), "json": json.dumps({"key": key}).encode()},
                )
                captions[key] = caption
            output.commit({"count": len(chunk), "successes": len(chunk)})
    return captions


@pytest.fixture(scope="session")
def shapes_model(tmp_path_factory) -> tuple[Path, Path]:
    return train_tiny_clip(tmp_path_factory.mktemp("shapes-model"))


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory, shapes_model, ray_local) -> ShapesDataset:
    """The shapes dataset scored (with embeddings) by the trained model through ``mmdata.score``."""
    import mmdata

    config_path, checkpoint = shapes_model
    root = tmp_path_factory.mktemp("shapes-data")
    captions = write_shapes_dataset(root)
    mmdata.score(dataset=str(root), model=str(config_path), pretrained=str(checkpoint), batch_size=32,
                 device="cpu", show_progress=False)
    return ShapesDataset(root, config_path, checkpoint, captions)
