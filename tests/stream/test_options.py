"""StreamOptions: one frozen set of options for mmdata.stream, checked when made, given whole or by field."""

import dataclasses

import pytest

import mmdata
from mmdata.stream import StreamOptions


@pytest.mark.parametrize(
    "values, message",
    [
        ({"decode": "cv2"}, "decode must be one of"),
        ({"on_error": "ignore"}, "on_error must be one of"),
        ({"decode": None, "image_transform": str}, "image_transform needs decoded images"),
        ({"drop_last": True, "pad": True}, "drop_last and pad are exclusive"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"shuffle_buffer": 0}, "shuffle_buffer must be at least 1"),
        ({"rank": 0}, "pass rank and world_size together"),
        ({"rank": 2, "world_size": 2}, "do not fit"),
        ({"rank": 0, "world_size": 0}, "do not fit"),
        ({"columns": "clip_score"}, r"columns takes a list of column names, e.g. \['clip_score'\]"),
    ],
)
def test_bad_options_are_refused_when_made(values, message):
    with pytest.raises(ValueError, match=message):
        StreamOptions(**values)
    with pytest.raises(ValueError, match=message):  # replacing fields checks them again
        dataclasses.replace(StreamOptions(), **values)


def test_from_options_merges_fields_over_options_and_names_unknown_ones():
    base = StreamOptions(seed=3, columns=["clip_score"])
    assert base.columns == ("clip_score",)
    merged = StreamOptions.from_options(base, shuffle=False)
    assert (merged.seed, merged.shuffle, merged.columns) == (3, False, ("clip_score",))
    assert StreamOptions.from_options(None, seed=5) == StreamOptions(seed=5)
    with pytest.raises(TypeError, match=r"unknown stream options \['shufle'\]; the options are \['shuffle'"):
        StreamOptions.from_options(shufle=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.seed = 4


def test_resolved_takes_rank_from_the_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (StreamOptions().resolved().rank, StreamOptions().resolved().world_size) == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert (StreamOptions().resolved().rank, StreamOptions().resolved().world_size) == (2, 3)
    assert StreamOptions(rank=0, world_size=1).resolved().world_size == 1  # given values win
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="rank 3 and world_size 3 do not fit"):
        StreamOptions().resolved()


def test_stream_takes_options_whole_or_by_field(dataset_factory):
    root, keys = dataset_factory([3, 2])
    options = StreamOptions(shuffle=False, decode=None, rank=0, world_size=1)
    whole = mmdata.stream(root, options=options)
    assert whole.options == options
    assert [item["key"] for item in whole] == keys
    overridden = mmdata.stream(root, options=options, rank=1, world_size=2)
    assert (overridden.rank, overridden.world_size, overridden.options.decode) == (1, 2, None)
    assert [item["key"] for item in overridden] == keys[3:]
    with pytest.raises(TypeError, match="unknown stream options"):
        mmdata.stream(root, batch_size=4)
