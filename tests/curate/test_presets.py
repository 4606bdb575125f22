"""Filter presets against hand-computed expectations on a small dataset whose every row is chosen to
pass or fail one rule of DataComp's basic filter or LAION-2B's, with a hand-written language table."""

import io

import pyarrow as pa
import pytest
from PIL import Image

from mmdata import layout
from mmdata.atomic import write_json, write_parquet
from mmdata.cli import main as cli_main
from mmdata.curate.presets import PRESETS
from mmdata.curate.view import filter_view, format_funnel, read_view, view_funnel, view_rules
from mmdata.schemas.annotations import LANGUAGE_SCHEMA
from mmdata.schemas.scores import score_schema
from mmdata.shard_output import shard_output

B32 = {"model_id": "ViT-B-32__openai", "model": "ViT-B-32", "pretrained": "openai", "weights": "tag",
       "scored_at": "2024-02-01T00:00:00"}
L14 = {"model_id": "ViT-L-14__openai", "model": "ViT-L-14", "pretrained": "openai", "weights": "tag",
       "scored_at": "2024-01-01T00:00:00"}

# (caption, original (w, h), stored (w, h), clip_score, caption_language); None: a failed download.
# Why each row passes or fails: b = datacomp-basic, l = laion2b.
ROWS = [
    ("a brown dog sleeping on a grey sofa", (640, 480), (256, 192), 0.31, "en"),  # b ✓ l ✓
    ("ein brauner Hund schläft", (640, 480), (256, 192), 0.35, "de"),  # b ✗ l ✗: German
    ("sleeping dog", (640, 480), (256, 192), 0.30, "en"),  # b ✗: 2 words (needs > 2); l ✓
    ("a b c", (640, 480), (256, 192), 0.29, "en"),  # b ✗: 5 characters (needs > 5); l ✓
    ("a b cd", (640, 480), (256, 192), 0.10, "en"),  # b ✓: 3 words, 6 characters; l ✗: 0.10
    ("a cat on a mat", (199, 800), (64, 256), 0.40, "en"),  # b ✗: original shorter side 199; l ✓
    ("a cat on a mat", (600, 200), (300, 100), 0.28, "en"),  # b ✓: side 200, aspect 3.0 exactly; l ✓: 0.28
    ("a cat on a mat", (601, 200), (300, 100), 0.50, "en"),  # b ✗: aspect 3.005; l ✓
    ("a cat on a mat", (1000, 1000), (100, 100), 0.27, "en"),  # b ✓: the ORIGINAL size counts; l ✗: 0.27
    ("  the   quick\tfox  ", (300, 300), (300, 300), 0.33, "en"),  # b ✓: 3 whitespace tokens, 19 chars; l ✓
    None,  # a failed download: dropped by status_success
    ("a cat on a mat", (300, 300), (300, 300), 0.50, None),  # b ✗ l ✗: no language
]
BASIC = [0, 4, 6, 8, 9]
LAION = [0, 2, 3, 5, 6, 7, 9]


def tiny_jpeg(row: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (row * 20 % 256, 90, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _keys(rows: list[int]) -> list[str]:
    return [layout.sample_key(0, row, 100) for row in rows]


def _scores(root, record: dict, rows: list[dict]) -> None:
    schema = score_schema(None, record)
    write_parquet(pa.Table.from_pylist(rows, schema=schema), layout.score_path(root, record["model_id"], "00000"),
                  schema)
    write_json(layout.model_record_path(root, record["model_id"]), record)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    score_rows, language_rows = [], []
    with shard_output(root, 0) as out:
        for row, spec in enumerate(ROWS):
            key = layout.sample_key(0, row, 100)
            if spec is None:
                out.add({"key": key, "uid": key, "url": f"http://x.test/{row}", "status": "failed_to_download",
                         "error_message": "404"})
                language_rows.append({"key": key})
                continue
            caption, (original_width, original_height), (width, height), score, language = spec
            out.add(
                {"key": key, "uid": key, "url": f"http://x.test/{row}", "caption": caption, "status": "success",
                 "width": width, "height": height, "original_width": original_width,
                 "original_height": original_height},
                {"jpg": tiny_jpeg(row), "txt": caption.encode()},
            )
            score_rows.append({"key": key, "clip_score": score})
            language_rows.append({"key": key, "caption_language": language,
                                  "caption_language_score": None if language is None else 0.9})
        out.commit()
    _scores(root, B32, score_rows)
    _scores(root, L14, score_rows)
    return root, language_rows


@pytest.fixture(scope="module")
def annotated(dataset):
    root, language_rows = dataset
    write_parquet(pa.Table.from_pylist(language_rows, schema=LANGUAGE_SCHEMA),
                  layout.annotations_dir(root) / "language.parquet", LANGUAGE_SCHEMA)
    return root


def test_datacomp_basic_matches_the_hand_computed_rows(annotated):
    view = filter_view(annotated, view="basic", preset="datacomp-basic")
    assert view.column("key").to_pylist() == _keys(BASIC)
    funnel = view_funnel(view)
    preset = "datacomp-basic"
    assert [(step["rule"], step["dropped"], step.get("preset")) for step in funnel["steps"]] == [
        ("status_success", 1, None),
        ("min_original_size", 1, preset),  # row 5
        ("max_original_aspect_ratio", 1, preset),  # row 7
        ("language", 2, preset),  # rows 1 and 11
        ("min_caption_words", 1, preset),  # row 2
        ("min_caption_chars", 1, preset),  # row 3
    ]
    record = view_rules(view)["preset"]
    assert record["name"] == preset and "baselines/apply_filter.py" in record["source"]
    assert record["rules"] == {"language": ["en"], "min_caption_words": 3, "min_caption_chars": 6,
                               "min_original_size": 200, "max_original_aspect_ratio": 3.0}
    assert record["overridden"] == {}
    assert "[preset datacomp-basic]" in format_funnel(funnel)


def test_laion2b_keeps_english_at_028_under_openai_b32(annotated):
    view = filter_view(annotated, view="laion", preset="laion2b")
    assert view.column("key").to_pylist() == _keys(LAION)
    steps = view_funnel(view)["steps"]
    assert [(step["rule"], step["dropped"]) for step in steps] == [
        ("status_success", 1), ("min_clip_score", 2), ("language", 2),  # rows 4, 8; rows 1, 11
    ]
    assert steps[1]["column"] == "clip_score" and steps[1]["preset"] == "laion2b"


def test_laion2b_refuses_scores_of_another_model_unless_asked(annotated):
    with pytest.raises(ValueError, match="ViT-B/32.*ViT-L-14__openai.*--preset-any-model"):
        filter_view(annotated, view="laion", preset="laion2b", score_model="ViT-L-14__openai")
    view = filter_view(annotated, view="laion", preset="laion2b", score_model="ViT-L-14__openai",
                       preset_any_model=True)
    assert view.column("key").to_pylist() == _keys(LAION)  # same scores written for both models
    assert view_funnel(view)["steps"][1]["column"] == "clip_score__ViT-L-14__openai"
    own = filter_view(annotated, view="laion", preset="laion2b", score_model="ViT-L-14__openai", min_clip_score=0.3)
    assert own.column("key").to_pylist() == _keys([0, 2, 5, 7, 9])  # a threshold of one's own: no check
    with pytest.raises(ValueError, match="pass preset="):
        filter_view(annotated, view="x", preset_any_model=True)


def test_datacomp_clip_top30_keeps_the_best_30_percent(annotated):
    # 11 scored successes: ceil(0.3 * 11) = 4 best, 0.50 (rows 7, 11), 0.40 (5), 0.35 (1); DataComp's
    # int(0.3 * 11) = 3rd (from 0) highest is the same 0.35
    view = filter_view(annotated, view="top", preset="datacomp-clip-top30")
    assert view.column("key").to_pylist() == _keys([1, 5, 7, 11])
    step = view_funnel(view)["steps"][1]
    assert step["rule"] == "top_fraction" and step["threshold"] == pytest.approx(0.35)


def test_user_rules_add_to_a_preset_and_win_where_they_overlap(annotated, capsys):
    view = filter_view(annotated, view="mine", preset="datacomp-basic", min_original_size=300, max_caption_words=5)
    # min_original_size 300 drops row 6 (side 200); max_caption_words 5 drops row 0 (8 words)
    assert view.column("key").to_pylist() == _keys([4, 8, 9])
    rules = view_rules(view)
    assert rules["preset"]["overridden"] == {"min_original_size": {"preset": 200, "given": 300}}
    assert rules["config"]["min_original_size"] == 300 and rules["config"]["max_caption_words"] == 5
    steps = {step["rule"]: step for step in view_funnel(view)["steps"]}
    assert steps["max_caption_words"].get("preset") is None and steps["min_caption_chars"]["preset"] == "datacomp-basic"

    multilingual = filter_view(annotated, view="any-language", preset="laion2b", language=None)
    assert multilingual.column("key").to_pylist() == _keys([0, 1, 2, 3, 5, 6, 7, 9, 11])

    code = cli_main(["filter", str(annotated), "--view", "cli", "--preset", "datacomp-basic", "--language", "en,de"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "- min_original_size" in printed and "[preset datacomp-basic]" in printed
    from_cli = read_view(annotated, "cli")
    from_python = filter_view(annotated, view="python", preset="datacomp-basic", language=["en", "de"])
    assert view_rules(from_cli) == view_rules(from_python) and from_cli.equals(from_python)
    assert view_rules(from_cli)["preset"]["overridden"] == {"language": {"preset": ["en"], "given": ["en", "de"]}}
    assert read_view(annotated, "cli").column("key").to_pylist() == _keys([0, 1, 4, 6, 8, 9])  # row 1: German


def test_presets_need_their_annotations_and_original_sizes(tmp_path):
    bare = tmp_path / "bare"
    with shard_output(bare, 0) as out:
        out.add({"key": "000", "uid": "000", "caption": "a cat on a mat", "status": "success", "width": 300,
                 "height": 300}, {"jpg": tiny_jpeg(0), "txt": b"a cat on a mat"})
        out.commit()
    with pytest.raises(ValueError, match="run `mmdata annotate DIR --language` first"):
        filter_view(bare, view="basic", preset="datacomp-basic")
    write_parquet(pa.Table.from_pylist([{"key": "000", "caption_language": "en", "caption_language_score": 0.9}],
                                       schema=LANGUAGE_SCHEMA),
                  layout.annotations_dir(bare) / "language.parquet", LANGUAGE_SCHEMA)
    with pytest.raises(ValueError, match="original_width.*min_size"):
        filter_view(bare, view="basic", preset="datacomp-basic")
    assert filter_view(bare, view="english", language="en").num_rows == 1
    with pytest.raises(ValueError, match="unknown preset 'laion5b'"):
        filter_view(bare, view="x", preset="laion5b")
    assert set(PRESETS) == {"datacomp-basic", "laion2b", "datacomp-clip-top30"}
