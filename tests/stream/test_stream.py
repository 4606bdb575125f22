"""mmdata.stream through real DataLoaders: exactly once per epoch across ranks and workers,
deterministic order, views, equal rank counts, metadata columns, and corrupt shards."""

import io
import warnings

import pyarrow as pa
import pytest
from PIL import Image

import mmdata
from mmdata import layout
from mmdata.atomic import write_parquet
from mmdata.schemas.views import VIEW_SCHEMA
from mmdata.stream.reader import StreamError


def keys_collate(items):
    return [item["key"] for item in items]


def epoch_keys(dataset, num_workers, batch_size=2):
    loader = dataset.loader(batch_size=batch_size, num_workers=num_workers, collate_fn=keys_collate)
    assert len(loader) == sum(-(-c // batch_size) for c in dataset.worker_sizes(num_workers))
    batches = list(loader)
    assert len(batches) == len(loader)
    return [key for batch in batches for key in batch]


def every_rank(root, world_size, num_workers, *, epoch=0, **options):
    per_rank = []
    for rank in range(world_size):
        dataset = mmdata.stream(root, rank=rank, world_size=world_size, decode=None, shuffle_buffer=5, **options)
        dataset.set_epoch(epoch)
        per_rank.append(epoch_keys(dataset, num_workers))
    return per_rank


# Worker processes are slow to start: the full world-size x workers grid runs on the uneven layout,
# the others skip world size 3 with workers; [2] leaves ranks and workers with nothing to read.
GRID = [(shards, w, n) for shards in ([9], [6, 1, 11, 4], [3] * 7, [2]) for w in (1, 2, 3) for n in (0, 1, 2)
        if n == 0 or w != 3 or shards in ([6, 1, 11, 4], [2])]


@pytest.mark.parametrize("shards, world_size, num_workers", GRID)
def test_exactly_once_deterministic_per_epoch(dataset_factory, shards, world_size, num_workers):
    root, keys = dataset_factory(shards, failures_every=5)
    first = every_rank(root, world_size, num_workers, seed=4)
    assert sorted(k for rank in first for k in rank) == sorted(keys)
    assert every_rank(root, world_size, num_workers, seed=4) == first
    second = every_rank(root, world_size, num_workers, seed=4, epoch=1)
    assert sorted(k for rank in second for k in rank) == sorted(keys)
    if len(keys) > 2:
        assert second != first


@pytest.mark.parametrize("world_size, num_workers", [(1, 0), (2, 0), (3, 0), (2, 2)])
def test_view_table_and_view_file_give_exactly_the_view(dataset_factory, world_size, num_workers):
    root, keys = dataset_factory([8, 3, 10])
    chosen = keys[::3]
    as_table = every_rank(root, world_size, num_workers, view=pa.table({"key": chosen}))
    assert sorted(k for rank in as_table for k in rank) == sorted(chosen)
    metadata = pa.concat_tables(
        [pa.parquet.read_table(layout.parquet_path(root, s)) for s in layout.complete_shards(root)]
    )
    rows = metadata.filter(pa.compute.is_in(metadata.column("key"), pa.array(chosen)))
    rows = rows.append_column("shard", pa.array([k[:5] for k in rows.column("key").to_pylist()]))
    write_parquet(rows, layout.views_dir(root) / "third.parquet", VIEW_SCHEMA)
    from_file = every_rank(root, world_size, num_workers, view="third")
    assert from_file == as_table


@pytest.mark.parametrize("world_size", [2, 3])
def test_drop_last_and_pad_equalise_ranks(dataset_factory, world_size):
    root, keys = dataset_factory([5, 6])  # 11 samples
    dropped = every_rank(root, world_size, 0, drop_last=True)
    assert {len(r) for r in dropped} == {len(keys) // world_size}
    assert len({k for r in dropped for k in r}) == world_size * (len(keys) // world_size)
    padded = every_rank(root, world_size, 0, pad=True)
    assert {len(r) for r in padded} == {-(-len(keys) // world_size)}
    assert {k for r in padded for k in r} == set(keys)


def test_rank_from_environment(dataset_factory, monkeypatch):
    root, keys = dataset_factory([4, 4])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dataset = mmdata.stream(root)
    assert (dataset.rank, dataset.world_size) == (1, 2)
    assert len(dataset) == 4


def test_items_carry_images_captions_and_columns(dataset_factory):
    root, keys = dataset_factory([3, 2], extra=lambda key: {"group": f"g{int(key) % 2}"})
    items = list(mmdata.stream(root, shuffle=False, columns=["quality", "group"]))
    assert [item["key"] for item in items] == keys
    first = items[0]
    assert isinstance(first["image"], Image.Image) and first["image"].mode == "RGB" and first["image"].size == (8, 8)
    assert first["caption"] == f"caption {first['key']}"
    assert first["quality"] == 0.0 and first["group"] == "g0"
    raw = next(iter(mmdata.stream(root, shuffle=False, decode=None)))
    assert raw["image"][:2] == b"\xff\xd8"
    transformed = next(iter(mmdata.stream(root, image_transform=lambda im: im.size, text_transform=str.upper)))
    assert transformed["image"] == (8, 8) and transformed["caption"].startswith("CAPTION")
    with pytest.raises(ValueError, match="nonexistent"):
        mmdata.stream(root, columns=["nonexistent"])


def test_unknown_view_keys_are_refused(dataset_factory):
    root, keys = dataset_factory([4])
    with pytest.raises(ValueError, match="1 keys of the view"):
        mmdata.stream(root, view=[keys[0], "9999999"])
    with pytest.raises(ValueError, match="more than once"):
        mmdata.stream(root, view=[keys[0], keys[0]])
    with pytest.raises(ValueError, match="no view named"):
        mmdata.stream(root, view="missing")


def corrupt(root, shard, at, replacement):
    path = layout.tar_path(root, shard)
    data = bytearray(path.read_bytes())
    data[at : at + len(replacement)] = replacement
    path.write_bytes(bytes(data))


def test_truncated_shard_raises_with_shard_and_key_or_is_counted(dataset_factory):
    root, keys = dataset_factory([4, 5])
    metadata = pa.parquet.read_table(layout.parquet_path(root, 1)).to_pylist()
    cut = metadata[3]["tar_offset"] + 100  # inside sample 3 of shard 1: samples 3 and 4 are lost
    path = layout.tar_path(root, 1)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(StreamError, match=f"shard 00001, sample {metadata[3]['key']}"):
        list(mmdata.stream(root, shuffle=False))
    dataset = mmdata.stream(root, shuffle=False, on_error="skip")
    with pytest.warns(RuntimeWarning, match="skipped 2 unreadable samples"):
        got = [item["key"] for item in dataset]
    assert got == keys[:7]
    assert dataset.skipped == 2 and {e.key for e in dataset.errors} == {metadata[3]["key"], metadata[4]["key"]}


def test_corrupt_image_counted_across_workers(dataset_factory):
    root, keys = dataset_factory([6, 6])
    row = pa.parquet.read_table(layout.parquet_path(root, 0)).to_pylist()[2]
    corrupt(root, 0, row["tar_offset"] + 512, b"\x00" * 64)  # the JPEG body of sample 2
    dataset = mmdata.stream(root, on_error="skip")
    loader = dataset.loader(batch_size=3, num_workers=2, collate_fn=keys_collate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = [k for batch in loader for k in batch]
    assert sorted(got) == sorted(set(keys) - {row["key"]})
    assert dataset.skipped == 1


def test_only_selected_bytes_are_read(dataset_factory, monkeypatch):
    root, keys = dataset_factory([10, 10])
    from mmdata.stream.source import LocalSource

    reads = []
    original = LocalSource.read_range
    monkeypatch.setattr(
        LocalSource, "read_range", lambda self, n, o, s: reads.append((n, o, s)) or original(self, n, o, s)
    )
    rows = pa.concat_tables([pa.parquet.read_table(layout.parquet_path(root, s)) for s in (0, 1)]).to_pylist()
    chosen = {rows[i]["key"] for i in (0, 1, 2, 7, 13)}
    assert sorted(item["key"] for item in mmdata.stream(root, view=sorted(chosen), decode=None)) == sorted(chosen)
    expected = sum(r["tar_size"] for r in rows if r["key"] in chosen)
    assert sum(size for _, _, size in reads) == expected
    assert len(reads) == 3  # samples 0-2 adjacent: one read; 7 and 13 alone
    reads.clear()
    list(mmdata.stream(root, decode=None))
    assert len(reads) == 2  # an unfiltered shard is one sequential read


def test_score_and_annotation_columns(dataset_factory):
    from mmdata.schemas.annotations import DEDUP_SCHEMA
    from mmdata.schemas.scores import score_schema
    from mmdata.score import store

    root, keys = dataset_factory([4, 3])
    for shard in layout.complete_shards(root):
        shard_keys = [k for k in keys if k.startswith(shard)]
        scores = pa.table({"key": shard_keys, "clip_score": [int(k) / 1000 for k in shard_keys]})
        write_parquet(scores, layout.score_path(root, "tiny", shard), score_schema(None))
    store.write_model_record(root, "tiny", {"model": "tiny"})
    dedup = pa.table({"key": keys[:2], "duplicate_of": [None, keys[0]]})
    write_parquet(dedup, layout.annotations_dir(root) / "dedup.parquet", DEDUP_SCHEMA)
    items = list(mmdata.stream(root, shuffle=False, decode=None, columns=["clip_score", "duplicate_of"]))
    assert [item["clip_score"] for item in items] == pytest.approx([int(k) / 1000 for k in keys])
    assert [item["duplicate_of"] for item in items] == [None, keys[0]] + [None] * (len(keys) - 2)
    with pytest.raises(ValueError, match="clash"):
        mmdata.stream(root, columns=["caption"])


def test_resume_after_a_skipped_sample_does_not_repeat_it(dataset_factory):
    root, keys = dataset_factory([5])
    row = pa.parquet.read_table(layout.parquet_path(root, 0)).to_pylist()[1]
    corrupt(root, 0, row["tar_offset"] + 512, b"\x00" * 64)
    dataset = mmdata.stream(root, shuffle=False, on_error="skip")
    iterator = iter(dataset)
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable"):
        assert [next(iterator)["key"] for _ in range(2)] == [keys[0], keys[2]]
        state = dataset.state_dict()
        iterator.close()  # the loss is reported when the iteration ends
    assert state["consumed"] == [3]
    fresh = mmdata.stream(root, shuffle=False, on_error="skip")
    fresh.load_state_dict(state)
    assert [item["key"] for item in fresh] == keys[3:]


def test_empty_folder_is_refused_and_empty_dataset_streams_nothing(dataset_factory, tmp_path):
    with pytest.raises(ValueError, match="no complete shard"):
        mmdata.stream(tmp_path)
    root, keys = dataset_factory([2], failures_every=1)
    dataset = mmdata.stream(root)
    assert keys == [] and len(dataset) == 0 and list(dataset) == []
    assert list(dataset.loader(batch_size=2, num_workers=1)) == []


# Every image extension of mmdata.schemas.members, as img2dataset or webdataset write them; "PNG"
# checks that extensions are matched in lower case. AVIF is lossy even at one colour.
IMAGE_FORMATS = [("gif", "GIF"), ("bmp", "BMP"), ("tiff", "TIFF"), ("tif", "TIFF"), ("webp", "WEBP"),
                 ("avif", "AVIF"), ("PNG", "PNG"), ("jpeg", "JPEG")]


def encoded(colour, pil_format: str) -> bytes:
    buffer = io.BytesIO()
    lossless = {"lossless": True} if pil_format == "WEBP" else {}
    Image.new("RGB", (8, 8), colour).save(buffer, format=pil_format, **lossless)
    return buffer.getvalue()


def test_every_image_extension_streams_as_rgb(dataset_factory):
    colour = (30, 60, 210)
    formats = IMAGE_FORMATS
    root, keys = dataset_factory([len(formats)], image=lambda row: {formats[row][0]: encoded(colour, formats[row][1])})
    items = list(mmdata.stream(root, shuffle=False, decode="pil"))
    assert [item["key"] for item in items] == keys
    for (extension, _), item in zip(formats, items):
        image = item["image"]
        assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (8, 8), extension
        tolerance = 0 if extension in ("gif", "bmp", "tiff", "tif", "webp", "PNG") else 8
        assert all(abs(a - b) <= tolerance for a, b in zip(image.getpixel((3, 3)), colour)), extension
