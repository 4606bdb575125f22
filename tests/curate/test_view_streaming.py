"""The filter a shard at a time gives exactly the view, the funnel and the rules of the filter over the
whole table in memory, on metadata-only datasets (extra input columns in some shards, annotation tables
in shard order and shuffled, in many row groups), under tight memory settings, and on s3."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from metadata_corpus import CorpusSpec, in_memory_table, write_corpus

from mmdata import table as table_module
from mmdata.curate import rules as rules_module
from mmdata.curate.presets import preset_named, with_preset
from mmdata.curate.rules import FilterConfig, apply_rules, build_rules, kth_largest
from mmdata.curate.view import filter_view, read_view, view_funnel, view_path, view_rules, write_view
from mmdata.options import config_from_options
from mmdata.schemas import align_table
from mmdata.schemas.views import VIEW_SCHEMA
from mmdata.storage import location, read_parquet

RULE_SETS = {
    "sizes and captions": {"min_size": 200, "max_aspect_ratio": 2.0, "min_caption_words": 3, "max_caption_words": 12,
                           "min_caption_chars": 10},
    "scores": {"top_fraction": 0.3, "min_clip_score": 0.25, "exclude_caption_regex": "(?i)sale|free"},
    "other model": {"score_model": "other", "top_fraction": 0.05},
    "language and dedup": {"language": "en,de", "min_language_score": 0.5, "drop_duplicates": True,
                           "caption_regex": "dog|cat|car"},
    "original size": {"min_original_size": 300, "max_original_aspect_ratio": 3.0},
    "where": {"where": '(source_id IS NULL OR source_id % 3 = 0) AND "clip_score__bench-b32" > 0.28 '
                       "AND laplacian_variance > 50 AND shard <> '00002' AND WIDTH > height"},
    "everything": {"preset": "datacomp-basic", "top_fraction": 0.5, "drop_duplicates": True, "min_size": 100,
                   "where": "caption_chars_per_100px < 10"},
    "laion": {"preset": "laion2b", "preset_any_model": True},
    "top": {"preset": "datacomp-clip-top30"},
}
SPEC = CorpusSpec(rows=24_000, shard_size=2_500, seed=3, models=("bench-b32", "other"), extra_column=True,
                  group_rows=3_000)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    ordered = tmp_path_factory.mktemp("ordered")
    write_corpus(ordered, SPEC)
    shuffled = tmp_path_factory.mktemp("shuffled")
    write_corpus(shuffled, CorpusSpec(rows=6_000, shard_size=1_000, seed=4, models=SPEC.models, extra_column=True,
                                      shuffle_annotations=True, group_rows=700))
    return {"ordered": ordered, "shuffled": shuffled}


def in_memory_view(root, options: dict) -> tuple[pa.Table, dict, dict]:
    """The view, funnel and config that rules over the whole in-memory table give."""
    options = dict(options)
    preset = options.pop("preset", None)
    options.pop("preset_any_model", None)
    if preset is not None:
        config, _ = with_preset(preset_named(preset), options)
    else:
        config = config_from_options(FilterConfig, "filter", options)
    table = in_memory_table(root)
    keep, funnel = apply_rules(table, build_rules(config, table.column_names, lambda names: [table.select(names)]))
    selected = align_table(table.filter(pa.array(keep)), VIEW_SCHEMA)
    return selected, funnel.to_dict(), config.to_dict()


@pytest.mark.parametrize("dataset", ["ordered", "shuffled"])
@pytest.mark.parametrize("rule_set", list(RULE_SETS))
def test_views_match_the_in_memory_filter(datasets, dataset, rule_set):
    root = datasets[dataset]
    options = RULE_SETS[rule_set]
    written = write_view(root, view="streamed", **options)
    view = read_view(root, "streamed")
    expected, funnel, config = in_memory_view(root, options)
    assert view.num_rows == written.rows == expected.num_rows
    assert view.equals(expected)
    assert 0 < view.num_rows < funnel["rows_in"]
    for recorded in (view_funnel(view), written.funnel):
        for step in recorded["steps"]:
            step.pop("preset", None)  # the in-memory reference marks no preset's rules
        assert recorded == funnel
    assert view_rules(view)["config"] == config == written.rules["config"]
    assert view.schema.metadata[b"mmdata.schema"] == b"views/1"


def test_top_fraction_threshold_is_the_old_formula(datasets):
    root = datasets["ordered"]
    table = in_memory_table(root)
    success = pc.equal(table.column("status"), "success").to_numpy(zero_copy_only=False)
    values = table.column("clip_score").to_numpy(zero_copy_only=False).astype(np.float64)
    scored = np.sort(values[success & ~np.isnan(values)])[::-1]
    for fraction in (0.3, 0.5, 1.0, 1 / len(scored)):
        view = filter_view(root, view="top", top_fraction=fraction)
        step = [step for step in view_funnel(view)["steps"] if step["rule"] == "top_fraction"][0]
        assert step["threshold"] == float(scored[int(np.ceil(fraction * len(scored))) - 1])


def test_tight_memory_settings_give_the_same_view(datasets, monkeypatch, tmp_path):
    """Row groups of 7 rows, one cached annotation row group, and a radix selection that never gathers
    (all four 16-bit passes): slower, the same bytes of content."""
    root = datasets["ordered"]
    options = RULE_SETS["everything"]
    expected = filter_view(root, view="roomy", **options)
    monkeypatch.setattr(table_module, "CACHED_GROUPS", 1)
    monkeypatch.setattr(rules_module, "_CANDIDATES", 0)
    import mmdata.atomic

    monkeypatch.setattr(mmdata.atomic, "GROUP_ROWS", 7)
    tight = filter_view(root, view="tight", **options)
    assert tight.equals(expected) and view_funnel(tight) == view_funnel(expected)
    assert pq.ParquetFile(view_path(root, "tight").path).metadata.num_row_groups > 100


@pytest.mark.parametrize("candidates", [0, 3, 1 << 20])
def test_kth_largest_is_exact(monkeypatch, candidates):
    monkeypatch.setattr(rules_module, "_CANDIDATES", candidates)
    rng = np.random.default_rng(candidates)
    samples = [
        rng.normal(0.3, 0.05, 5_000).astype(np.float32).astype(np.float64),
        np.round(rng.normal(0, 1, 3_000), 1),  # many ties
        np.array([0.0, -0.0, np.inf, -np.inf, 1e-300, -1e-300, 5.0]),
        np.full(1_000, 0.25),
    ]
    for values in samples:
        batches = np.array_split(values, 7)
        ordered = np.sort(values)[::-1]
        for k in (1, 2, len(values) // 3, len(values) - 1, len(values)):
            assert kth_largest(lambda batches=batches: iter(batches), k) == ordered[k - 1]
    assert kth_largest(lambda: iter([np.array([])]), 1) is None
    with pytest.raises(ValueError, match="between 1 and"):
        kth_largest(lambda: iter([np.array([1.0])]), 2)


def test_where_must_be_row_local(datasets):
    root = datasets["shuffled"]
    for expression in ("clip_score > (SELECT avg(clip_score) FROM samples)", "row_number() OVER () < 10"):
        with pytest.raises(ValueError, match="subqueries and window functions"):
            write_view(root, view="x", where=expression)
    with pytest.raises(ValueError, match="not a valid SQL"):
        write_view(root, view="x", where="width >")
    with pytest.raises(ValueError, match="not a valid SQL"):
        write_view(root, view="x", where="no_such_column > 1")
    assert not (root / "views" / "x.parquet").exists()


def test_original_size_rules_need_one_recorded_size_in_the_whole_dataset(tmp_path):
    """A shard whose samples all lack the original size does not stop the filter while another records it."""
    root = tmp_path / "data"
    write_corpus(root, CorpusSpec(rows=3_000, shard_size=1_000, annotations=False))
    path = root / "00001.parquet"
    table = pq.read_table(path)
    for name in ("original_width", "original_height"):
        table = table.set_column(table.schema.get_field_index(name), name, pa.nulls(table.num_rows, pa.int32()))
    pq.write_table(table, path)
    written = write_view(root, view="big", min_original_size=300)
    expected, funnel, _ = in_memory_view(root, {"min_original_size": 300})
    assert read_view(root, "big").equals(expected) and written.funnel == funnel
    for shard in ("00000.parquet", "00002.parquet"):
        pq.write_table(table, root / shard)
    with pytest.raises(ValueError, match="no successful sample records original_width"):
        write_view(root, view="none", min_original_size=300)
    assert not (root / "views" / "none.parquet").exists()


def test_a_view_and_a_table_on_s3_are_the_local_ones(s3_bucket, tmp_path):
    spec = CorpusSpec(rows=2_000, shard_size=500, seed=8, group_rows=450)
    local, remote = tmp_path / "data", f"{s3_bucket}/data"
    write_corpus(local, spec)
    write_corpus(remote, spec)
    options = RULE_SETS["everything"]
    assert filter_view(remote, view="kept", **options).equals(filter_view(local, view="kept", **options))
    assert read_view(remote, "kept").to_pylist() == read_view(local, "kept").to_pylist()
    table_module.write_table(remote, f"{s3_bucket}/out/table.parquet")
    assert read_parquet(location(f"{s3_bucket}/out/table.parquet")).equals(in_memory_table(local))
