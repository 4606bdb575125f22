"""Named filter presets: the filtering baselines that built the field's reference datasets, as rules.

A preset expands to :class:`~mmdata.curate.rules.FilterConfig` options; the view records the preset's
name, its rules and what the user changed (``view_rules(view)["preset"]``), and each rule it adds is a
step of the funnel marked with the preset's name. Options the user passes beside a preset add rules;
an option the preset also sets takes the user's value (``preset="datacomp-basic", min_original_size=256``
asks for 256), and the record lists it under ``overridden``.

Sources (mlfoundations/datacomp, ``baselines/apply_filter.py``; thresholds in ``baselines/utils.py``):

* ``datacomp-basic``: ``load_uids_with_basic_filter_helper``: fastText says English
  (``lang_detect_model.predict(text.replace("\\n", " "))`` top label ``en``, no score floor),
  ``len(text.split()) > 2``, ``len(text) > 5``, ``min(original_width, original_height) >= 200`` and
  ``max / min <= 3.0`` on the original size. DataComp predicts with ``lid.176.bin``; mmdata with the
  compressed ``lid.176.ftz`` (the same labels except on borderline captions).
* ``laion2b``: the ``laion2b`` branch: ``clip_b32_similarity_score >= 0.28`` and English. LAION (and
  DataComp's reproduction) judged English with CLD3 (gcld3); mmdata uses fastText. The 0.28 threshold
  is calibrated for OpenAI's ViT-B/32 CLIP, so the scores must come from it (open_clip ``ViT-B-32``
  or ``ViT-B-32-quickgelu`` with ``--pretrained openai``); another model is refused unless the user
  opts in (``preset_any_model``) or sets a threshold of their own (``min_clip_score``).
* ``datacomp-clip-top30``: ``clip_score_l14_30_percent``/``clip_score_b32_30_percent``: the 30% of the
  pool with the highest CLIP score (DataComp scored with OpenAI ViT-L/14 or B/32; a quantile is
  relative, so any scoring model works). DataComp's ``get_threshold`` keeps the scores at least the
  ``int(0.3 n)``-th highest (counting from 0), mmdata's ``top_fraction`` the ``ceil(0.3 n)`` highest:
  one sample apart when ``0.3 n`` is a whole number, the same otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_DATACOMP = "mlfoundations/datacomp baselines/apply_filter.py"


@dataclass(frozen=True)
class Preset:
    name: str
    rules: dict  # FilterConfig options
    source: str  # where the rules come from
    # (model, pretrained) pairs whose clip_score the rules are calibrated for; empty: any model
    score_models: tuple[tuple[str, str], ...] = field(default=())


PRESETS = {
    preset.name: preset
    for preset in (
        Preset(
            "datacomp-basic",
            {"language": ("en",), "min_caption_words": 3, "min_caption_chars": 6, "min_original_size": 200,
             "max_original_aspect_ratio": 3.0},
            f"{_DATACOMP}: load_uids_with_basic_filter_helper",
        ),
        Preset(
            "laion2b",
            {"min_clip_score": 0.28, "language": ("en",)},
            f"{_DATACOMP}: the laion2b branch (clip_b32_similarity_score >= 0.28, English)",
            score_models=(("ViT-B-32", "openai"), ("ViT-B-32-quickgelu", "openai")),
        ),
        Preset(
            "datacomp-clip-top30",
            {"top_fraction": 0.3},
            f"{_DATACOMP}: clip_score_l14_30_percent (get_threshold with p=0.3)",
        ),
    )
}
PRESET_NAMES = tuple(PRESETS)


def preset_named(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESET_NAMES)}")
    return PRESETS[name]


def with_preset(preset: Preset, options: dict):
    """The FilterConfig of ``preset``'s rules plus the user's ``options`` (whose values win), and the
    record a view keeps: name, source, the preset's rules and the ones the user changed."""
    from mmdata.curate.rules import FilterConfig
    from mmdata.options import config_from_options

    config = config_from_options(FilterConfig, "filter", {**preset.rules, **options})
    rules = FilterConfig(**preset.rules).to_dict()
    effective = config.to_dict()
    overridden = {
        name: {"preset": value, "given": effective.get(name)}
        for name, value in rules.items() if effective.get(name) != value
    }
    return config, {"name": preset.name, "source": preset.source, "rules": rules, "overridden": overridden}


def check_score_model(preset: Preset, model_record: dict | None, model_id: str | None, *, any_model: bool) -> None:
    """Refuse a preset whose threshold is calibrated for other scores than the dataset's, unless ``any_model``."""
    if not preset.score_models or any_model:
        return
    record = model_record or {}
    used = (str(record.get("model")), str(record.get("pretrained")))
    if record.get("weights") == "tag" and used in preset.score_models:
        return
    wanted = " or ".join(f"--model {model} --pretrained {pretrained}" for model, pretrained in preset.score_models)
    raise ValueError(
        f"preset {preset.name}'s clip_score threshold is calibrated for OpenAI's ViT-B/32 CLIP, but the scores "
        f"used come from {model_id or 'no model'} (model {used[0]}, pretrained {used[1]}): score with "
        f"`mmdata score DIR {wanted.split(' or ')[0]}` (and pick it with --score-model), or pass "
        f"preset_any_model=True (--preset-any-model) to apply the threshold anyway; accepted: {wanted}"
    )

