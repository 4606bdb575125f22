"""clip_collate: image tensors and tokens in one batch, from text or from pre-tokenized captions."""

import numpy as np
import pytest
import torch

import mmdata
from mmdata.stream.collate import clip_collate


def to_tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)


def char_tokens(texts):
    """A stand-in tokenizer with open_clip's calling convention: list[str] -> [n, 6] ints."""
    return torch.tensor([[ord(c) for c in text[:6].ljust(6)] for text in texts])


def test_collate_tokenizes_text_and_stacks_images(dataset_factory):
    root, keys = dataset_factory([5])
    dataset = mmdata.stream(root, shuffle=False, image_transform=to_tensor, columns=["quality"])
    batch = next(iter(dataset.loader(batch_size=4, collate_fn=clip_collate(char_tokens))))
    assert batch["image"].shape == (4, 3, 8, 8)
    assert batch["text"].tolist() == char_tokens([f"caption {k}" for k in keys[:4]]).tolist()
    assert batch["key"] == keys[:4] and batch["quality"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_collate_stacks_pretokenized_captions(dataset_factory):
    root, keys = dataset_factory([3])
    dataset = mmdata.stream(root, shuffle=False, image_transform=to_tensor, text_transform=lambda t: char_tokens([t]))
    batch = clip_collate()([item for item in dataset])
    assert batch["text"].shape == (3, 6)
    with pytest.raises(ValueError, match="tokenizer"):
        clip_collate()([item for item in mmdata.stream(root, image_transform=to_tensor)])
    with pytest.raises(ValueError, match="image tensors"):
        clip_collate(char_tokens)([item for item in mmdata.stream(root)])
