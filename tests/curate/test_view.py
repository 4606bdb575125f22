"""Filters → views: rules AND-ed, funnels that add up, --where, global top_fraction, dedup/contamination."""

import json

import numpy as np
import pyarrow.compute as pc
import pytest
from curate_corpus import build_corpus, encode, random_scene, render, write_dataset

from mmdata import layout
from mmdata.cli import main as cli_main
from mmdata.curate.decontaminate import decontaminate
from mmdata.curate.dedup import dedup
from mmdata.curate.view import filter_view, read_view, view_funnel, view_rules
from mmdata.shards import SampleSpan, read_sample
from mmdata.table import read_table

WORDS = [
    "a red circle", "photo of two blue squares on a beige background", "stock image watermark", "", "cat",
    "a b c d e f g h",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("view")
    corpus = build_corpus(6, seed=5)  # 66 images with exact and near duplicates among them
    rng = np.random.default_rng(2)
    scores = [float(v) for v in rng.uniform(0.0, 0.4, len(corpus))]
    captions = [WORDS[i % len(WORDS)] for i in range(len(corpus))]
    keys = write_dataset(root, corpus, shard_size=20, scores=scores, captions=captions, failures_every=9)
    return root, dict(zip(keys, corpus))


def successes(root):
    table = read_table(root)
    return table.filter(pc.equal(table.column("status"), "success"))


def test_funnel_adds_up_and_status_comes_first(dataset):
    root, _ = dataset
    view = filter_view(root, view="sized", min_size=130, max_aspect_ratio=1.3, min_caption_words=1, max_caption_words=6)
    funnel = view_funnel(view)
    everything = read_table(root)
    assert funnel["rows_in"] == everything.num_rows
    assert funnel["steps"][0] == {"rule": "status_success", "dropped": everything.num_rows - successes(root).num_rows}
    assert funnel["rows_in"] - sum(step["dropped"] for step in funnel["steps"]) == funnel["rows_out"] == view.num_rows
    expected = [
        row["key"] for row in successes(root).to_pylist()
        if min(row["width"], row["height"]) >= 130
        and max(row["width"], row["height"]) / min(row["width"], row["height"]) <= 1.3
        and 1 <= len(row["caption"].split()) <= 6
    ]
    assert view.column("key").to_pylist() == expected
    assert read_view(root, "sized").equals(view)
    assert [rule["rule"] for rule in view_rules(view)["rules"]] == [
        "status_success", "min_size", "max_aspect_ratio", "min_caption_words", "max_caption_words"
    ]


def test_top_fraction_is_the_global_quantile(dataset):
    root, _ = dataset
    table = successes(root)
    scores = np.sort(table.column("clip_score").to_numpy())[::-1]
    threshold = scores[int(np.ceil(0.4 * len(scores))) - 1]
    view = filter_view(root, view="top", top_fraction=0.4, caption_regex="circle|square")
    # the quantile is over every scored success, not over the rows the caption rule leaves
    expected = [
        row["key"] for row in table.to_pylist()
        if row["clip_score"] >= threshold and ("circle" in row["caption"] or "square" in row["caption"])
    ]
    assert view.column("key").to_pylist() == expected
    step = [step for step in view_funnel(view)["steps"] if step["rule"] == "top_fraction"][0]
    assert step["threshold"] == pytest.approx(float(threshold))
    assert step["dropped"] == len(scores) - int((scores >= threshold).sum())


def test_min_clip_score_and_caption_exclusion(dataset):
    root, _ = dataset
    view = filter_view(root, view="scored", min_clip_score=0.2, exclude_caption_regex="(?i)watermark")
    expected = [
        row["key"] for row in successes(root).to_pylist()
        if row["clip_score"] >= 0.2 and "watermark" not in row["caption"]
    ]
    assert view.column("key").to_pylist() == expected
    with pytest.raises(ValueError, match="clip_score__nope"):
        filter_view(root, view="x", min_clip_score=0.2, score_model="nope")


def test_where_is_duckdb_sql_over_the_table_columns(dataset, capsys):
    root, _ = dataset
    code = cli_main([
        "filter", str(root), "--view", "wide", "--where", "width > height AND caption LIKE '%a%' AND shard = '00001'"
    ])
    assert code == 0
    printed = capsys.readouterr().out
    view = read_view(root, "wide")
    expected = [
        row["key"] for row in successes(root).to_pylist()
        if row["width"] > row["height"] and "a" in row["caption"] and row["shard"] == "00001"
    ]
    assert view.column("key").to_pylist() == expected and expected
    funnel = view_funnel(view)
    assert "- where" in printed and f"{funnel['rows_out']:>12,}" in printed
    quoted = filter_view(root, view="quoted", where='"clip_score__scene-descriptor" >= 0.2')
    assert quoted.column("key").to_pylist() == [
        row["key"] for row in successes(root).to_pylist() if row["clip_score"] >= 0.2
    ]
    assert cli_main(["filter", str(root), "--view", "bad", "--where", "no_such_column > 1"]) == 2
    assert "not a valid SQL" in capsys.readouterr().err


def test_drop_duplicates_and_exclude_contaminated(dataset, tmp_path):
    root, items = dataset
    with pytest.raises(ValueError, match="mmdata dedup"):
        filter_view(root, view="unique", drop_duplicates=True)
    marked = dedup(root, exact=True, near=True, executor="inline").table
    view = filter_view(root, view="unique", drop_duplicates=True)
    kept = set(view.column("key").to_pylist())
    assert kept == set(marked.filter(pc.is_null(marked.column("duplicate_of"))).column("key").to_pylist())
    # one picture per scene survives the hash tiers, plus the look-alikes and the redraws (semantic only)
    representatives = [key for key in kept if items[key].kind not in ("lookalike", "redraw")]
    assert sorted(items[key].base for key in representatives) == list(range(6))
    assert len(kept) == 18

    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    originals = sorted(representatives)[:2]
    for key in originals:
        (evaluation / f"{key}.jpg").write_bytes(items[key].image)
    (evaluation / "unrelated.png").write_bytes(encode(render(random_scene(np.random.default_rng(99))), "png"))
    decontaminate(root, against=evaluation, embedding=False, executor="inline")
    clean = filter_view(root, view="clean", drop_duplicates=True, exclude_contaminated=True)
    assert set(clean.column("key").to_pylist()) == kept - set(originals)
    assert view_funnel(clean)["steps"][-1] == {"rule": "exclude_contaminated", "dropped": 2}


def test_view_rows_locate_their_samples(dataset):
    root, _ = dataset
    view = filter_view(root, view="all")
    assert view.num_rows == successes(root).num_rows
    for row in view.to_pylist()[::7]:
        with open(layout.tar_path(root, row["shard"]), "rb") as handle:
            key, members = read_sample(handle, SampleSpan(row["tar_offset"], row["tar_size"]))
        assert key == row["key"] and "txt" in members


def test_bad_requests_say_what_to_do(dataset):
    root, _ = dataset
    with pytest.raises(ValueError, match="top_fraction"):
        filter_view(root, view="x", top_fraction=1.5)
    with pytest.raises(ValueError, match="view name"):
        filter_view(root, view="../escape")
    with pytest.raises(ValueError, match="regular expression"):
        filter_view(root, view="x", caption_regex="(")
    with pytest.raises(FileNotFoundError, match="mmdata filter"):
        read_view(root, "never-made")
    assert json.loads(json.dumps(view_rules(filter_view(root, view="plain"))))["config"] == {}


MIXED = [
    "a red circle on a beige background", "ein roter Kreis auf beigem Hintergrund",
    "un cercle rouge sur un fond beige", "un círculo rojo sobre un fondo beige", "merci", None,
]


def test_language_and_caption_length_rules(tmp_path, capsys):
    from mmdata.curate.annotate import annotate
    from mmdata.shard_output import shard_output

    root = tmp_path / "mixed"
    picture = encode(render(random_scene(np.random.default_rng(1))), "jpeg")
    with shard_output(root, 0) as out:
        for row, caption in enumerate(MIXED):
            key = layout.sample_key(0, row, 10)
            members = {"jpg": picture, **({"txt": caption.encode()} if caption else {})}
            out.add({"key": key, "uid": key, "caption": caption, "status": "success", "width": 64, "height": 64},
                    members)
        out.commit()
    with pytest.raises(ValueError, match=r"run `mmdata annotate DIR --language` first"):
        filter_view(root, view="x", language="en")
    with pytest.raises(ValueError, match=r"min_language_score needs .*mmdata annotate DIR --language"):
        filter_view(root, view="x", min_language_score=0.5)
    annotate(root, image_quality=False, executor="inline")
    table = read_table(root)
    assert table.column("caption_language").to_pylist()[:4] == ["en", "de", "fr", "es"]
    assert table.column("caption_language").to_pylist()[5] is None

    assert cli_main(["filter", str(root), "--view", "ende", "--language", "en,DE"]) == 0
    assert "- language" in capsys.readouterr().out
    view = read_view(root, "ende")
    assert view.column("key").to_pylist() == [layout.sample_key(0, row, 10) for row in (0, 1)]
    assert view_rules(view)["config"]["language"] == ["en", "de"]
    confident = filter_view(root, view="confident", min_language_score=0.5)
    scores = table.column("caption_language_score").to_pylist()
    assert confident.column("key").to_pylist() == [
        key for key, score in zip(table.column("key").to_pylist(), scores) if score is not None and score >= 0.5
    ]
    # DataComp's "more than 5 characters": len(caption) > 5; a null caption has none
    long_enough = filter_view(root, view="chars", min_caption_chars=6)
    assert long_enough.column("key").to_pylist() == [layout.sample_key(0, row, 10) for row in range(4)]
    with pytest.raises(ValueError, match="ISO 639 codes"):
        filter_view(root, view="x", language="english")
    with pytest.raises(ValueError, match="min_language_score"):
        filter_view(root, view="x", min_language_score=1.5)


def test_words_and_characters_are_counted_as_datacomp_counts_them():
    """DataComp: ``len(text.split()) > 2`` and ``len(text) > 5`` in Python; the rules count the same
    for every whitespace character Python knows, and for captions that are only whitespace."""
    import pyarrow as pa

    from mmdata.curate.rules import FilterConfig, apply_rules, build_rules

    spaces = [chr(code) for code in range(0x110000) if chr(code).isspace()]
    captions = [f"{space}one{space}two{space * 2}three{space}" for space in spaces]
    captions += [f"one{space}two" for space in spaces] + [space * 3 for space in spaces]
    captions += ["one\u200btwo three", "é" * 6, "e\u0301e\u0301e\u0301", "日本語の説明文", ""]
    table = pa.table({"status": ["success"] * len(captions), "caption": captions})
    for words, characters in ((3, None), (2, None), (None, 6), (None, 7)):
        config = FilterConfig(min_caption_words=words, min_caption_chars=characters)
        keep, _ = apply_rules(table, build_rules(config, table.column_names))
        expected = [
            (words is None or len(caption.split()) >= words) and (characters is None or len(caption) >= characters)
            for caption in captions
        ]
        assert keep.tolist() == expected, (words, characters)
