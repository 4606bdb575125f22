"""mmdata.stream.resume without data: per-worker counts after k batches, and the state dict round trip."""

import json

import pytest

from mmdata.stream.loader import StreamingDataLoader
from mmdata.stream.options import StreamOptions
from mmdata.stream.resume import STATE_FORMAT, ConsumedCounts, ResumeState


@pytest.mark.parametrize(
    "start, batches, expected",
    [
        # workers of 5 and 3 samples, batches of 2, served 0, 1, 0, 1, 0: the last batch of worker 1 is partial
        (ConsumedCounts.at_start(2), 0, ConsumedCounts(2, (0, 0), 0)),
        (ConsumedCounts.at_start(2), 3, ConsumedCounts(2, (4, 2), 1)),
        (ConsumedCounts.at_start(2), 4, ConsumedCounts(2, (4, 3), 0)),
        (ConsumedCounts.at_start(2), 5, ConsumedCounts(2, (5, 3), 0)),
        # a resumed loader whose worker 0 plays logical worker 1 serves 1 first
        (ConsumedCounts(2, (2, 0), 1), 1, ConsumedCounts(2, (2, 2), 0)),
        (ConsumedCounts(2, (2, 0), 1), 3, ConsumedCounts(2, (4, 3), 0)),
    ],
)
def test_counts_after_batches(start, batches, expected):
    assert start.after_batches([5, 3], 2, batches) == expected


def test_more_batches_than_the_workers_hold_is_an_error():
    with pytest.raises(ValueError, match="6 batches consumed but the workers only hold 5"):
        ConsumedCounts.at_start(2).after_batches([5, 3], 2, 6)


def state(fingerprint="f", **options):
    return ResumeState(fingerprint, StreamOptions(rank=0, world_size=1, **options))


def test_state_dict_round_trip_and_epochs():
    saved = state(seed=3)
    saved.set_epoch(2)
    saved.counts = ConsumedCounts(2, (4, 1), 1)
    as_json = json.loads(json.dumps(saved.state_dict(batch_size=8)))
    assert as_json["format"] == STATE_FORMAT and as_json["consumed"] == [4, 1] and as_json["seed"] == 3
    resumed = state(seed=3)
    resumed.load_state_dict(as_json, num_workers=2, batch_size=8)
    assert (resumed.epoch, resumed.counts) == (2, ConsumedCounts(2, (4, 1), 1))
    resumed.set_epoch(2)  # the same epoch keeps its counts
    assert resumed.counts_for(2) == ConsumedCounts(2, (4, 1), 1)
    with pytest.raises(ValueError, match="counts for 2 worker.*read by 3"):
        resumed.counts_for(3)
    resumed.set_epoch(3)
    assert resumed.counts is None and resumed.counts_for(3) == ConsumedCounts.at_start(3)


def test_load_refuses_other_data_settings_and_topology():
    saved = state(seed=3).state_dict(ConsumedCounts(2, (1, 1)), batch_size=4)
    with pytest.raises(ValueError, match="not an mmdata.stream state"):
        state().load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="another dataset or view"):
        state("g", seed=3).load_state_dict(saved)
    with pytest.raises(ValueError, match="seed was 3, now 4"):
        state(seed=4).load_state_dict(saved)
    with pytest.raises(ValueError, match="saved with 2 DataLoader workers, this loader has 1"):
        state(seed=3).load_state_dict(saved, num_workers=1, batch_size=4)
    with pytest.raises(ValueError, match="batch_size 4, this loader has 2"):
        state(seed=3).load_state_dict(saved, num_workers=2, batch_size=2)
    state(seed=3, decode=None).load_state_dict(saved)  # decode does not change which samples come next


def test_the_loader_refuses_a_dataset_without_resume_state():
    with pytest.raises(ValueError, match="reads a StreamingDataset"):
        StreamingDataLoader([1, 2, 3])
