"""Resume: the state after k batches, loaded in a new process, continues with exactly the rest of
the epoch in the same order; a changed topology is refused."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mmdata

CHILD = Path(__file__).with_name("resume_child.py")


def keys_collate(items):
    return [item["key"] for item in items]


def make_loader(root, num_workers, batch_size, *, world_size=1, rank=0, epoch=1):
    dataset = mmdata.stream(root, seed=7, shuffle_buffer=4, decode=None, rank=rank, world_size=world_size)
    dataset.set_epoch(epoch)
    return dataset.loader(batch_size=batch_size, num_workers=num_workers, collate_fn=keys_collate)


def take(loader, batches):
    out = []
    for index, batch in enumerate(loader):
        out.extend(batch)
        if index + 1 == batches:
            break
    return out


def test_resume_in_a_new_process(dataset_factory, tmp_path):
    """num_workers 0, 1, 2 (and rank 1 of 2): stop after 3 batches, continue in one fresh process."""
    root, keys = dataset_factory([7, 2, 9, 5])
    cases, expected = [], []
    for num_workers, world_size, rank in [(0, 1, 0), (1, 1, 0), (2, 1, 0), (2, 2, 1)]:
        full = [k for batch in make_loader(root, num_workers, 3, world_size=world_size, rank=rank) for k in batch]
        loader = make_loader(root, num_workers, 3, world_size=world_size, rank=rank)
        first = take(loader, 3)
        state = loader.state_dict()
        cases.append({"root": str(root), "state": state, "num_workers": num_workers, "batch_size": 3,
                      "world_size": world_size, "rank": rank})
        expected.append((first, full))
    cases_path = tmp_path / "cases.json"
    cases_path.write_text(json.dumps(cases))
    child = subprocess.run([sys.executable, str(CHILD), str(cases_path)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert not result["ray_imported"]  # a training job never needs Ray
    rests = result["rests"]
    for (first, full), rest in zip(expected, rests):
        assert first and rest and first + rest == full


@pytest.mark.parametrize("num_workers", [0, 2])
def test_repeated_resumes_at_every_point(dataset_factory, num_workers):
    """Stop and resume over and over (each time in a fresh loader): the pieces make up the epoch."""
    root, keys = dataset_factory([5, 8, 4])
    full = [k for batch in make_loader(root, num_workers, 2) for k in batch]
    pieces, state = [], None
    for step in range(3 if num_workers else 20):
        loader = make_loader(root, num_workers, 2)
        if state is not None:
            loader.load_state_dict(state)
        pieces.extend(take(loader, 1 + step % 3))
        state = json.loads(json.dumps(loader.state_dict()))
        if len(pieces) == len(full):
            break
    loader = make_loader(root, num_workers, 2)
    loader.load_state_dict(state)
    assert pieces + [k for batch in loader for k in batch] == full


def test_direct_iteration_state_and_epoch_end(dataset_factory):
    root, keys = dataset_factory([6, 6])
    dataset = mmdata.stream(root, seed=1, decode=None)
    full = [item["key"] for item in dataset]
    iterator = iter(dataset)
    first = [next(iterator)["key"] for _ in range(5)]
    state = dataset.state_dict()
    assert state["consumed"] == [5]
    fresh = mmdata.stream(root, seed=1, decode=None)
    fresh.load_state_dict(state)
    assert first + [item["key"] for item in fresh] == full
    assert [item["key"] for item in fresh] == full  # a finished epoch starts over when iterated again
    fresh.set_epoch(1)
    assert sorted(item["key"] for item in fresh) == sorted(full)


def test_changed_topology_or_data_is_refused(dataset_factory):
    root, keys = dataset_factory([6, 6])
    loader = make_loader(root, 2, 2)
    take(loader, 2)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="same num_workers"):
        make_loader(root, 1, 2).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size was 1, now 2"):
        make_loader(root, 2, 2, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size 2"):
        make_loader(root, 2, 4).load_state_dict(state)
    other = mmdata.stream(root, seed=7, shuffle_buffer=4, view=keys[:5])
    with pytest.raises(ValueError, match="another dataset or view"):
        other.load_state_dict(state)
