"""load_clip: configs, checkpoint forms, ids, provenance and the errors a user can act on."""

import json
import time

import pytest
import torch
from safetensors.torch import save_file

from mmdata.score.model import ModelLoadError, load_clip, resolve_model, tiny_model_config, write_model_config


def _same_weights(model, state) -> bool:
    loaded = model.state_dict()
    return loaded.keys() == state.keys() and all(torch.equal(loaded[name], state[name]) for name in state)


@pytest.mark.parametrize("form", ["state_dict", "training_checkpoint", "safetensors"])
def test_checkpoint_forms_load_the_same_weights(form, tiny_config, tiny_state, tmp_path):
    if form == "state_dict":
        path = tmp_path / "weights.pt"
        torch.save(tiny_state, path)
    elif form == "training_checkpoint":  # what open_clip_train saves under DDP
        path = tmp_path / "epoch_3.pt"
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in tiny_state.items()}}, path)
    else:
        path = tmp_path / "weights.safetensors"
        save_file({name: tensor.contiguous() for name, tensor in tiny_state.items()}, path)
    clip = load_clip(str(tiny_config), str(path))
    assert _same_weights(clip.model, tiny_state)
    assert not clip.model.training
    sha = clip.provenance["checkpoint_sha256"]
    assert len(sha) == 64 and clip.model_id == f"tiny__{sha[:8]}"


def test_provenance_names_everything_that_shapes_a_score(tiny_config, tiny_checkpoint):
    clip = load_clip(str(tiny_config), str(tiny_checkpoint), device="auto")
    provenance = clip.provenance
    assert provenance["model_config"] == tiny_model_config()
    assert provenance["image_size"] == [64, 64]
    assert provenance["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert provenance["image_std"] == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    assert provenance["tokenizer"] == "SimpleTokenizer" and provenance["context_length"] == 77
    assert provenance["open_clip_version"].startswith("3.")
    assert provenance["weights"] == "checkpoint" and provenance["embed_dim"] == clip.embed_dim == 64
    json.dumps(provenance)  # goes into schema metadata and model.json
    assert clip.device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_random_init_is_the_same_in_every_process_and_ids_tell_configs_apart(tiny_config, tmp_path):
    first, second = load_clip(str(tiny_config)), load_clip(str(tiny_config))
    assert _same_weights(first.model, second.model.state_dict())
    wider = write_model_config(tmp_path / "other" / "tiny.json", tiny_model_config(width=192))
    assert resolve_model(str(wider)).model_id != first.model_id
    assert first.model_id.startswith("tiny__random-init-")
    assert resolve_model("ViT-B-32", "laion2b_s34b_b79k").model_id == "ViT-B-32__laion2b_s34b_b79k"


def test_hub_weights_offline_say_network_and_local_checkpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="network") as caught:
        load_clip("ViT-B-32", "laion2b_s34b_b79k")
    assert "local" in str(caught.value) and "--pretrained" in str(caught.value)
    assert time.perf_counter() - started < 30


def test_errors_say_what_is_wrong(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip(str(tiny_config), str(tmp_path / "missing.pt"))
    with pytest.raises(ModelLoadError, match="unknown model 'ViT-Q-99'"):
        load_clip("ViT-Q-99")
    with pytest.raises(ModelLoadError, match="not a checkpoint file nor a pretrained tag"):
        resolve_model("ViT-B-32", "no_such_tag")
    with pytest.raises(FileNotFoundError, match="model config"):
        load_clip(str(tmp_path / "absent.json"))
    not_a_config = tmp_path / "bad.json"
    not_a_config.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ModelLoadError, match="vision_cfg"):
        load_clip(str(not_a_config))
    other_architecture = tmp_path / "wide.pt"
    torch.save(
        load_clip(
            str(write_model_config(tmp_path / "w" / "wide.json", tiny_model_config(width=192)))
        ).model.state_dict(),
        other_architecture,
    )
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_clip(str(tiny_config), str(other_architecture))


class Payload:
    """Any class: unpickling it would run code from the checkpoint."""


def test_pickled_objects_are_refused_not_unpickled(tiny_config, tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": {"visual.proj": Payload()}}, path)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_clip(str(tiny_config), str(path))
