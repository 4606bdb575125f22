"""MetaCLIP balancing on corpora whose answers are known: matching semantics, per-entry counts within
binomial tolerance of MetaCLIP's expectation, determinism across re-runs and executors, the pool
(statuses, --from-view, samples matching nothing) and clear errors for bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmdata
from mmdata import layout
from mmdata.curate.balance import (
    EntryMatcher,
    balance,
    draws,
    entry_counts_path,
    read_entries,
    spaced_entry,
    spaced_text,
)
from mmdata.curate.view import format_funnel, read_view, view_funnel, view_path
from mmdata.schemas.balance import BALANCE_KEY, ENTRY_COUNTS_SCHEMA
from mmdata.schemas.views import FUNNEL_KEY, RULES_KEY, VIEW_SCHEMA
from mmdata.shard_output import shard_output
from mmdata.storage import location

SIGMAS = 4.0


def write_captions(root, captions: list[str | None], *, shard_size: int = 500, failed_every: int = 0,
                   with_uid: bool = True) -> list[str]:
    """A metadata-only dataset (empty tars): one successful row per caption, plus a failed download
    after every ``failed_every``-th; returns the successful rows' keys in order."""
    keys = []
    rows = []
    for position, caption in enumerate(captions):
        rows.append(("success", caption))
        if failed_every and position % failed_every == failed_every - 1:
            rows.append(("failed_to_download", caption))
    for shard, start in enumerate(range(0, len(rows), shard_size)):
        with shard_output(root, shard) as output:
            for row, (status, caption) in enumerate(rows[start : start + shard_size]):
                key = layout.sample_key(shard, row, shard_size)
                url = f"http://example.test/{shard}/{row}.jpg"
                record = {"key": key, "uid": layout.sample_uid(url, caption), "url": url, "caption": caption,
                          "status": status}
                if status != "success":
                    record["error_message"] = "HTTP 404"
                else:
                    keys.append(key)
                output.add(record)
            output.commit({"count": len(rows[start : start + shard_size])})
    if not with_uid:  # img2dataset metadata: no uid column
        for shard in layout.complete_shards(root):
            path = layout.parquet_path(root, shard).local_path()
            pq.write_table(pq.read_table(path).drop(["uid"]), path)
    return keys


def entry_file(folder, entries, name="entries.txt"):
    path = folder / name
    path.write_text("\n".join(entries) + "\n")
    return path


def single_match_corpus(counts: dict[str, int], seed: int = 0) -> list[str]:
    """Captions that each match exactly one entry, ``counts[entry]`` of them, shuffled."""
    captions = [f"a photo of {entry}, outdoors." for entry, count in counts.items() for _ in range(count)]
    np.random.default_rng(seed).shuffle(captions)
    return captions


def within_binomial(observed: int, expected: float, variance: float) -> bool:
    return abs(observed - expected) <= SIGMAS * math.sqrt(variance) + 1e-9


# --- matching ------------------------------------------------------------------------------------------

def test_captions_and_entries_are_spaced_like_metaclip():
    assert spaced_text("A dog, running.") == " A dog ,  running .  "
    assert spaced_text("tab\there\nnew\rline") == " tab here new line "
    assert spaced_entry("hot dog") == " hot dog "
    assert spaced_entry("猫") == "猫"  # scripts written without spaces match inside words
    assert spaced_entry("e.g.") == " e.g."  # trailing punctuation binds: matched before any text


@pytest.mark.parametrize("caption, expected", [
    ("A dog.", {"dog"}),
    ("dogs and hotdogs", set()),  # whole words only
    ("Dog", {"Dog"}),  # case-sensitive, as MetaCLIP: "Dog" is its own entry
    ("DOG", set()),
    ("a hot dog stand", {"hot dog", "dog"}),  # overlapping entries both match
    ("dog dog dog", {"dog"}),  # once per sample
    ("I love New York!", {"New York"}),  # multi-word, punctuation spaced off
    ("New\tYork", {"New York"}),  # a tab is a space
    ("NewYork", set()),
    ("我的猫很可爱", {"猫"}),
    ("", set()),
    (None, set()),
])
def test_matching_semantics(caption, expected):
    entries = ["dog", "hot dog", "Dog", "New York", "猫"]
    rows, entry_ids = EntryMatcher(entries).matches([caption])
    assert {entries[i] for i in entry_ids} == expected
    assert list(rows) == [0] * len(expected)


def test_matches_are_per_row_and_distinct():
    matcher = EntryMatcher(["cat", "black cat", "dog"])
    rows, entry_ids = matcher.matches(["a black cat", None, "dog, cat and dog", "nothing"])
    assert list(zip(rows.tolist(), entry_ids.tolist())) == [(0, 0), (0, 1), (2, 0), (2, 2)]


# --- the entry list ------------------------------------------------------------------------------------

def test_entry_list_lines_are_stripped_and_deduplicated(tmp_path):
    path = tmp_path / "entries.txt"
    path.write_text("\ufeffdog\n  cat  \n\n\ndog\nhot dog\r\n")
    assert read_entries(location(path)) == ["dog", "cat", "hot dog"]
    as_json = tmp_path / "metadata.json"
    as_json.write_text(json.dumps(["dog", " cat", "dog"]))
    assert read_entries(location(as_json)) == ["dog", "cat"]


@pytest.mark.parametrize("name, content, error, message", [
    ("missing.txt", None, FileNotFoundError, "no entry list at"),
    ("empty.txt", "", ValueError, "holds no entry"),
    ("blank.txt", "\n   \n\t\n", ValueError, "holds no entry"),
    ("bad.json", "{\"dog\": 1}", ValueError, "JSON list of strings"),
    ("broken.json", "[\"dog\"", ValueError, "not valid JSON"),
])
def test_a_bad_entry_list_is_refused_before_any_work(tmp_path, name, content, error, message):
    write_captions(tmp_path / "data", ["a dog"])
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(error, match=message):
        balance(tmp_path / "data", metadata=str(tmp_path / name), executor="inline")
    assert not view_path(tmp_path / "data", "balanced").exists()


def test_a_binary_entry_list_is_refused(tmp_path):
    (tmp_path / "entries.bin").write_bytes(b"\xff\xfe\x00dog")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_entries(location(tmp_path / "entries.bin"))


@pytest.mark.parametrize("options, message", [
    ({"t": 0}, "t must be a positive integer"),
    ({"t": 2.5}, "t must be a positive integer"),
    ({"seed": -1}, "seed must be"),
    ({"metadata": ""}, "metadata is required"),
    ({"colour": 1}, "unknown balance option"),
])
def test_bad_options_are_refused(tmp_path, options, message):
    arguments = {"metadata": "entries.txt", **options}
    with pytest.raises(ValueError, match=message):
        balance(tmp_path, **arguments)


# --- counts against MetaCLIP's expectation --------------------------------------------------------------

COUNTS = {"tail1": 3, "tail2": 40, "edge": 100, "head1": 250, "head2": 800, "head3": 2000}
T = 100


@pytest.fixture(scope="module")
def single_match(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    captions = single_match_corpus(COUNTS) + ["no entry here"] * 30 + [None] * 5
    np.random.default_rng(1).shuffle(captions)
    write_captions(folder / "data", captions, failed_every=50)
    entries = entry_file(folder, [*COUNTS, "never matched"])
    result = balance(folder / "data", metadata=str(entries), t=T, executor="inline")
    return folder, entries, captions, result


def test_each_entry_keeps_about_min_count_t(single_match):
    _, _, _, result = single_match
    table = result.entry_counts.to_pydict()
    assert table["entry"] == [*COUNTS, "never matched"]
    assert table["count"] == [*COUNTS.values(), 0]
    for entry, count, probability, kept in zip(table["entry"], table["count"], table["probability"], table["kept"]):
        p = min(1.0, T / max(count, 1))
        assert probability == pytest.approx(p)
        if count <= T:
            assert kept == count, entry  # the tail is kept whole
        else:
            assert within_binomial(kept, min(count, T), count * p * (1 - p)), (entry, kept)
    assert sum(table["kept"]) == result.rows  # one entry per sample


def test_the_view_is_a_filter_view_with_a_funnel_that_adds_up(single_match):
    folder, _, captions, result = single_match
    stored = read_view(folder / "data", "balanced")
    assert stored.schema.remove_metadata() == VIEW_SCHEMA.remove_metadata()
    assert stored.num_rows == result.rows
    metadata = stored.schema.metadata
    assert {RULES_KEY, FUNNEL_KEY, BALANCE_KEY} <= set(metadata)
    funnel = view_funnel(stored)
    assert [step["rule"] for step in funnel["steps"]] == ["status_success", "matched_any_entry", "balanced"]
    failed = len(captions) // 50
    assert funnel["rows_in"] == len(captions) + failed
    assert funnel["steps"][0]["dropped"] == failed
    assert funnel["steps"][1]["dropped"] == 35  # "no entry here" and the captionless rows
    assert funnel["rows_in"] - sum(step["dropped"] for step in funnel["steps"]) == funnel["rows_out"] == stored.num_rows
    assert "balanced" in format_funnel(funnel)
    rules = json.loads(metadata[RULES_KEY])
    assert rules["config"]["stage"] == "balance" and rules["config"]["t"] == T
    summary = json.loads(metadata[BALANCE_KEY])
    assert summary["kept"] == stored.num_rows and summary["head_entries"] == 3 and summary["entries_matched"] == 6


def test_the_entry_counts_table_lives_outside_views_and_annotations(single_match):
    folder, _, _, result = single_match
    root = folder / "data"
    assert result.entry_counts_path == entry_counts_path(root, "balanced")
    assert result.entry_counts_path.local_path() == root / "balance" / "balanced.entry_counts.parquet"
    stored = pq.read_table(result.entry_counts_path.local_path())
    assert stored.schema.remove_metadata() == ENTRY_COUNTS_SCHEMA.remove_metadata()
    assert not (root / "annotations").exists()
    assert sorted(p.name for p in (root / "views").iterdir()) == ["balanced.parquet"]
    assert "count" not in mmdata.read_table(root).column_names  # nothing joins onto the samples


def test_dropped_samples_are_failures_and_samples_matching_nothing(single_match):
    folder, _, _, result = single_match
    table = mmdata.read_table(folder / "data", columns=["key", "caption", "status"]).to_pylist()
    by_key = {row["key"]: row for row in table}
    for key in read_view(folder / "data", "balanced").column("key").to_pylist():
        row = by_key[key]
        assert row["status"] == "success"
        assert any(entry in (row["caption"] or "") for entry in COUNTS)


def test_multi_entry_captions_keep_head_riders(tmp_path):
    """A caption matching a head and a tail entry is kept with probability 1 - (1-p_head)(1-p_tail) = 1:
    the head entry gains those riders above t; the exact expectation is the sum over its samples."""
    heads = {"alpha": 600, "beta": 900}
    tails = {"rare": 30, "odd": 20}
    captions = [f"{head} only" for head, count in heads.items() for _ in range(count)]
    captions += ["alpha with rare" for _ in range(tails["rare"])]
    captions += ["beta with odd and alpha" for _ in range(tails["odd"])]
    np.random.default_rng(3).shuffle(captions)
    write_captions(tmp_path / "data", captions, shard_size=400)
    entries = entry_file(tmp_path, ["alpha", "beta", "rare", "odd"])
    t = 150
    result = balance(tmp_path / "data", metadata=str(entries), t=t, executor="inline")

    count = {"alpha": 600 + 30 + 20, "beta": 900 + 20, "rare": 30, "odd": 20}
    p = {entry: min(1.0, t / n) for entry, n in count.items()}
    samples = {  # (how many, entries they match)
        "alpha only": (600, ["alpha"]), "beta only": (900, ["beta"]),
        "alpha with rare": (30, ["alpha", "rare"]), "beta with odd and alpha": (20, ["beta", "odd", "alpha"]),
    }
    expected = dict.fromkeys(count, 0.0)
    variance = dict.fromkeys(count, 0.0)
    for number, matched in samples.values():
        q = 1 - math.prod(1 - p[entry] for entry in matched)
        for entry in matched:
            expected[entry] += number * q
            variance[entry] += number * q * (1 - q)
    table = result.entry_counts.to_pydict()
    kept = dict(zip(table["entry"], table["kept"]))
    assert table["count"] == [count[entry] for entry in table["entry"]]
    for entry in count:
        assert within_binomial(kept[entry], expected[entry], variance[entry]), (entry, kept[entry], expected[entry])
    assert kept["rare"] == 30 and kept["odd"] == 20  # tails whole
    # alpha's 50 riders (kept by their tail entries) come on top of the t it keeps of its 650
    assert expected["alpha"] == pytest.approx(t + 50 * (1 - t / 650))
    assert kept["alpha"] >= 30 + 20  # the riders are all there


# --- determinism ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    counts = {"red car": 300, "car": 200, "blue sky": 150, "cloud": 40, "tree": 5}
    captions = single_match_corpus(counts, seed=5) + [f"red car under a blue sky, tree {i}" for i in range(60)]
    write_captions(folder / "data", captions, shard_size=250)
    return folder, entry_file(folder, list(counts))


def _outputs(root, view):
    stored = read_view(root, view)
    counts = pq.read_table(entry_counts_path(root, view).local_path())
    return stored.to_pylist(), counts.to_pylist()


def test_reruns_and_executors_write_the_same_view(small):
    folder, entries = small
    root = folder / "data"
    balance(root, metadata=str(entries), t=50, view="inline", executor="inline")
    balance(root, metadata=str(entries), t=50, view="again", executor="inline")
    balance(root, metadata=str(entries), t=50, view="pool", executor="processes", workers=2)
    reference = _outputs(root, "inline")
    assert _outputs(root, "again") == reference
    assert _outputs(root, "pool") == reference
    assert 0 < len(reference[0]) < 755


def test_another_seed_is_another_draw(small):
    folder, entries = small
    root = folder / "data"
    first = balance(root, metadata=str(entries), t=50, view="seed0", executor="inline")
    other = balance(root, metadata=str(entries), t=50, view="seed7", seed=7, executor="inline")
    assert read_view(root, "seed0").column("key").to_pylist() != read_view(root, "seed7").column("key").to_pylist()
    assert first.entry_counts.column("count").equals(other.entry_counts.column("count"))


def test_the_draw_depends_on_uid_entry_and_seed_only():
    uid, entry = np.array([11, 12], dtype=np.uint64), np.array([5, 5], dtype=np.uint64)
    assert np.array_equal(draws(uid, entry, 0), draws(uid, entry, 0))
    assert not np.array_equal(draws(uid, entry, 0), draws(uid, entry, 1))
    values = draws(np.arange(100_000, dtype=np.uint64), np.full(100_000, 9, dtype=np.uint64), 0)
    assert 0 <= values.min() and values.max() < 1
    assert abs(values.mean() - 0.5) < 0.01 and abs((values < 0.1).mean() - 0.1) < 0.01


def test_a_reordered_entry_list_keeps_the_same_samples(small):
    folder, entries = small
    root = folder / "data"
    reordered = entry_file(folder, list(reversed(entries.read_text().splitlines())), name="reordered.txt")
    balance(root, metadata=str(entries), t=50, view="ordered", executor="inline")
    balance(root, metadata=str(reordered), t=50, view="reordered", executor="inline")
    assert _outputs(root, "ordered")[0] == _outputs(root, "reordered")[0]


def test_ray_writes_the_same_view(small, ray_local):
    folder, entries = small
    root = folder / "data"
    balance(root, metadata=str(entries), t=50, view="ray-inline", executor="inline")
    balance(root, metadata=str(entries), t=50, view="ray", executor="ray", workers=2)
    assert _outputs(root, "ray") == _outputs(root, "ray-inline")


# --- the pool ---------------------------------------------------------------------------------------------

def test_from_view_restricts_the_pool(small):
    folder, entries = small
    root = folder / "data"
    mmdata.filter_view(root, view="no-trees", exclude_caption_regex="tree")
    clean = set(read_view(root, "no-trees").column("key").to_pylist())
    result = balance(root, metadata=str(entries), t=50, view="from-clean", from_view="no-trees", executor="inline")
    kept = set(read_view(root, "from-clean").column("key").to_pylist())
    assert kept and kept <= clean
    table = result.entry_counts.to_pydict()
    counts = dict(zip(table["entry"], table["count"]))
    assert counts["tree"] == 0 and counts["red car"] == 300 and counts["blue sky"] == 150
    steps = {step["rule"]: step for step in result.funnel["steps"]}
    assert list(steps) == ["status_success", "from_view", "matched_any_entry", "balanced"]
    assert steps["from_view"]["view"] == "no-trees"
    assert steps["from_view"]["dropped"] == 755 - len(clean)
    assert "view_rows_not_found" not in steps["from_view"]
    rules = json.loads(read_view(root, "from-clean").schema.metadata[RULES_KEY])
    assert rules["from_view_rules"]["config"] == {"exclude_caption_regex": "tree"}


def test_from_view_errors(small):
    folder, entries = small
    root = folder / "data"
    with pytest.raises(FileNotFoundError, match="no view 'nope'"):
        balance(root, metadata=str(entries), from_view="nope", executor="inline")
    with pytest.raises(ValueError, match="both 'same'"):
        balance(root, metadata=str(entries), from_view="same", view="same", executor="inline")


def test_a_view_not_grouped_by_shard_is_refused(small):
    folder, entries = small
    root = folder / "data"
    rows = read_view(root, "inline").to_pylist()
    shuffled = [rows[-1], *rows[:-1]]  # the last shard's row first: shard 00003, 00000, ..., 00003
    from mmdata.atomic import write_parquet

    write_parquet(pa.Table.from_pylist(shuffled, schema=VIEW_SCHEMA), view_path(root, "scrambled"), VIEW_SCHEMA)
    with pytest.raises(ValueError, match="not grouped by shard in shard order"):
        balance(root, metadata=str(entries), from_view="scrambled", view="x", executor="inline")


def test_img2dataset_metadata_without_uids(tmp_path):
    captions = single_match_corpus({"dog": 30, "cat": 10})
    write_captions(tmp_path / "data", captions, with_uid=False)
    entries = entry_file(tmp_path, ["dog", "cat"])
    result = balance(tmp_path / "data", metadata=str(entries), t=10, executor="inline")
    uids = mmdata.read_table(tmp_path / "data", columns=["key", "uid"]).to_pydict()
    uid_of = dict(zip(uids["key"], uids["uid"]))
    stored = read_view(tmp_path / "data", "balanced")
    assert stored.num_rows == result.rows
    assert all(uid_of[key] == uid for key, uid in zip(*stored.select(["key", "uid"]).to_pydict().values()))
    assert result.entry_counts.column("kept").to_pylist()[1] == 10


# --- with real shards: the view streams and reshards unchanged --------------------------------------------

def test_a_balanced_view_streams_and_reshards(tmp_path):
    from curate_corpus import build_corpus, write_dataset

    items = build_corpus(bases=3)
    captions = [f"a {'square' if i % 3 else 'circle'} shape, number {i}" for i in range(len(items))]
    keys = write_dataset(tmp_path / "data", items, shard_size=12, captions=captions)
    entries = entry_file(tmp_path, ["square", "circle"])
    balance(tmp_path / "data", metadata=str(entries), t=4, executor="inline")
    stored = read_view(tmp_path / "data", "balanced")
    assert stored.num_rows > 0 and set(stored.column("key").to_pylist()) <= set(keys)
    assert stored.column("tar_size").null_count == 0
    streamed = [item["key"] for item in mmdata.stream(tmp_path / "data", view="balanced", decode=None)]
    assert sorted(streamed) == sorted(stored.column("key").to_pylist())
    mmdata.reshard(tmp_path / "data", view="balanced", output=tmp_path / "out", shard_size=5, executor="inline")
    resharded = mmdata.read_table(tmp_path / "out", columns=["uid", "status"])
    assert sorted(resharded.column("uid").to_pylist()) == sorted(stored.column("uid").to_pylist())


def test_a_dataset_and_entry_list_on_s3_balance_like_a_local_folder(s3_bucket, tmp_path):
    captions = single_match_corpus({"sun": 40, "moon": 12, "star": 3}, seed=2) + ["sun and moon"] * 5
    write_captions(tmp_path / "data", captions, shard_size=20, failed_every=9)
    write_captions(f"{s3_bucket}/data", captions, shard_size=20, failed_every=9)
    location(f"{s3_bucket}/entries.txt").write_text("sun\nmoon\nstar\n")
    entries = entry_file(tmp_path, ["sun", "moon", "star"])
    local = balance(tmp_path / "data", metadata=str(entries), t=10, executor="inline")
    remote = balance(f"{s3_bucket}/data", metadata=f"{s3_bucket}/entries.txt", t=10, executor="processes", workers=2)
    stored = read_view(tmp_path / "data", "balanced")
    assert read_view(f"{s3_bucket}/data", "balanced").to_pylist() == stored.to_pylist()
    assert remote.entry_counts.to_pylist() == local.entry_counts.to_pylist()
    assert remote.rows == local.rows > 0
    assert not location(f"{s3_bucket}/data/balance/.balanced.parts").exists()  # the parts are gone
    assert entry_counts_path(f"{s3_bucket}/data", "balanced").exists()


# --- the command ---------------------------------------------------------------------------------------

def test_the_command_prints_the_funnel_and_writes_the_view(small, capsys):
    from mmdata.cli import main

    folder, entries = small
    root = folder / "data"
    argv = ["balance", str(root), "--metadata", str(entries), "--t", "60", "--view", "cli", "--seed", "3",
            "--executor", "inline"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "matched_any_entry" in out and "rows out" in out and "red car" in out
    assert f"view of {read_view(root, 'cli').num_rows:,} samples written to" in out
    assert view_path(root, "cli").exists()
    assert main(["balance", str(root), "--metadata", str(folder / "missing.txt"), "--executor", "inline"]) == 2
    assert "no entry list at" in capsys.readouterr().err


def test_the_command_passes_only_what_was_typed(monkeypatch, capsys):
    from types import SimpleNamespace

    from mmdata.cli import main

    calls = []
    no_entries = pa.table({"entry": pa.array([], pa.string()), "count": pa.array([], pa.int64()),
                           "kept": pa.array([], pa.int64())})
    result = SimpleNamespace(funnel={"rows_in": 0, "steps": [], "rows_out": 0}, rows=0, path="views/balanced.parquet",
                             entry_counts=no_entries, entry_counts_path="balance/balanced.entry_counts.parquet")
    monkeypatch.setattr("mmdata.curate.balance.balance", lambda *args, **kwargs: calls.append((args, kwargs)) or result)
    assert main(["balance", "data", "--metadata", "e.txt"]) == 0
    assert main(["balance", "data", "--metadata", "e.txt", "--t", "5", "--from-view", "clean", "--workers", "2"]) == 0
    assert calls == [(("data",), {"metadata": "e.txt"}),
                     (("data",), {"metadata": "e.txt", "t": 5, "from_view": "clean", "workers": 2})]
