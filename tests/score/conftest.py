import pytest
import torch

from mmdata.score.model import load_clip, tiny_model_config, write_model_config


@pytest.fixture
def tiny_config(tmp_path):
    """A tiny open_clip config JSON (embed 64, 64 px, 2-layer towers)."""
    return write_model_config(tmp_path / "models" / "tiny.json", tiny_model_config())


@pytest.fixture
def tiny_state(tiny_config):
    """Weights unlike any random init (load_clip seeds its random init), so a checkpoint that
    failed to load could not pass for a loaded one."""
    generator = torch.Generator().manual_seed(1)
    state = load_clip(str(tiny_config), None).model.state_dict()
    return {name: (tensor + 0.05 * torch.randn(tensor.shape, generator=generator)
                   if tensor.is_floating_point() else tensor)
            for name, tensor in state.items()}


@pytest.fixture
def tiny_checkpoint(tiny_state, tmp_path):
    """A plain state dict of the tiny model, saved the way a user would."""
    path = tmp_path / "models" / "tiny.pt"
    torch.save(tiny_state, path)
    return path
