"""Batches for open_clip: image tensors (from an open_clip preprocess given as ``image_transform``)
and tokenized captions."""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch


def clip_collate(tokenizer: Callable | None = None) -> Callable[[list[dict]], dict[str, Any]]:
    """A ``collate_fn`` giving ``{"image": [n,3,H,W], "text": [n,context], "key": [...], ...}``.

    Captions still text are tokenized in one call with ``tokenizer`` (open_clip's
    ``get_tokenizer(name)``); captions already tokenized by a ``text_transform`` are stacked.
    Metadata columns become tensors when numeric, lists otherwise. The function pickles, so
    DataLoader workers started with ``spawn`` can take it.
    """
    return functools.partial(_collate, tokenizer=tokenizer)


def _collate(items: list[dict], tokenizer: Callable | None) -> dict[str, Any]:
    if not items:
        raise ValueError("cannot collate an empty batch")
    images = [item["image"] for item in items]
    if not isinstance(images[0], torch.Tensor):
        raise ValueError("clip_collate needs image tensors: pass the open_clip preprocess as image_transform")
    captions = [item["caption"] for item in items]
    if isinstance(captions[0], str):
        if tokenizer is None:
            raise ValueError("captions are text: pass clip_collate(tokenizer) or a text_transform")
        text = tokenizer(captions)
    else:
        text = torch.stack([torch.as_tensor(c).reshape(-1) for c in captions])
    batch: dict[str, Any] = {"image": torch.stack(images), "text": text, "key": [item["key"] for item in items]}
    for name in items[0]:
        if name not in batch and name != "caption":
            values = [item[name] for item in items]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            batch[name] = torch.tensor(values) if numeric else values
    return batch
