"""A view written by `mmdata filter` is streamed as exactly its selected keys, across ranks."""

import mmdata


def test_a_filter_view_streams_exactly_its_keys(dataset_factory):
    root, stored = dataset_factory([7, 12, 5], failures_every=4)
    view = mmdata.filter_view(root, view="low_quality_out", where="quality >= 3")
    selected = view.column("key").to_pylist()
    assert 0 < len(selected) < len(stored)

    streamed = []
    for rank in range(2):
        dataset = mmdata.stream(root, view="low_quality_out", rank=rank, world_size=2, decode=None, columns=["quality"])
        for item in dataset:
            assert item["quality"] >= 3
            streamed.append(item["key"])
    assert sorted(streamed) == sorted(selected)
