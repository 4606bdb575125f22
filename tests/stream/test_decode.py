"""Decoding: the default gives exactly the pixels mmdata.stream always gave (Pillow, converted to RGB),
plain JPEGs through Pillow's decoder without ``Image.open`` and the rest through it; ``decode="tensor"``
the same pixels as a uint8 [3, H, W] tensor; ``jpeg_decoder="simplejpeg"`` Pillow's pixels within
SIMPLEJPEG_TOLERANCE, decoding or failing on the same samples; decode threads change nothing but speed."""

import io
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import mmdata
from mmdata.stream import StreamOptions
from mmdata.stream.decode import plain_jpeg_frame, simplejpeg_rgb

SIMPLEJPEG_TOLERANCE = 1  # per channel: simplejpeg bundles its own libjpeg-turbo build, not Pillow's


def photo(width: int = 40, height: int = 24, seed: int = 0) -> Image.Image:
    """Smooth colour ramps with noise: what chroma subsampling and DCT rounding act on."""
    rng = np.random.default_rng(seed)
    ramps = np.cumsum(rng.normal(0, 9, (height, width, 3)), axis=1) + rng.uniform(60, 190, 3)
    return Image.fromarray(np.clip(ramps, 0, 255).astype(np.uint8))


def encoded(image: Image.Image, pil_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


# (extension, bytes, whether simplejpeg decodes it rather than handing it to Pillow)
IMAGES = [
    ("jpg", encoded(photo(), "JPEG", quality=90), True),  # 4:2:0, what download writes
    ("jpg", encoded(photo(33, 17, 1), "JPEG", quality=95, subsampling=0), True),  # 4:4:4, odd sizes
    ("jpeg", encoded(photo(seed=2), "JPEG", quality=80, subsampling=1), True),  # 4:2:2
    ("jpg", encoded(photo(seed=3), "JPEG", quality=85, progressive=True), True),
    ("jpg", encoded(photo(seed=4).convert("L"), "JPEG", quality=85), True),  # grayscale
    ("jpg", encoded(photo(seed=5).convert("CMYK"), "JPEG", quality=85), False),  # CMYK: Pillow's conversion
    ("png", encoded(photo(seed=6).convert("RGBA"), "PNG"), False),
    ("png", encoded(photo(seed=7).convert("P"), "PNG"), False),
    ("webp", encoded(photo(seed=8), "WEBP", quality=80), False),
]


def rotated_exif() -> Image.Exif:
    """EXIF saying "rotate 90° to show": what a transform's ``ImageOps.exif_transpose`` reads from ``info``."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif


def todays_pixels(data: bytes) -> np.ndarray:
    """What mmdata.stream has always yielded: Pillow's decode, converted to RGB when it is not."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


@pytest.fixture
def mixed_images(dataset_factory):
    root, keys = dataset_factory([len(IMAGES)], image=lambda row: {IMAGES[row][0]: IMAGES[row][1]})
    return root, keys


def pixels(item) -> np.ndarray:
    image = item["image"]
    if isinstance(image, torch.Tensor):
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        return image.permute(1, 2, 0).numpy()
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    return np.asarray(image)


def test_default_decode_gives_todays_pixels_and_pillow_tensors_the_same(mixed_images):
    root, keys = mixed_images
    as_pil = list(mmdata.stream(root, shuffle=False))
    as_tensor = list(mmdata.stream(root, shuffle=False, decode="tensor", jpeg_decoder="pillow"))
    assert [item["key"] for item in as_pil] == [item["key"] for item in as_tensor] == keys
    for (extension, data, _), pil_item, tensor_item in zip(IMAGES, as_pil, as_tensor):
        expected = todays_pixels(data)
        assert np.array_equal(pixels(pil_item), expected), extension
        assert np.array_equal(pixels(tensor_item), expected), extension


def test_default_tensors_are_simplejpegs(mixed_images):
    root, keys = mixed_images
    default = list(mmdata.stream(root, shuffle=False, decode="tensor"))
    forced = list(mmdata.stream(root, shuffle=False, decode="tensor", jpeg_decoder="simplejpeg"))
    assert [item["key"] for item in default] == keys
    for (extension, _, _), left, right in zip(IMAGES, default, forced):
        assert torch.equal(left["image"], right["image"]), extension


def test_plain_jpegs_skip_image_open_and_the_rest_keep_it(mixed_images):
    root, _ = mixed_images
    items = list(mmdata.stream(root, shuffle=False))
    for (extension, data, by_simplejpeg), item in zip(IMAGES, items):
        plain = plain_jpeg_frame(data) is not None
        assert plain == by_simplejpeg, extension  # every YCbCr or grey JPEG here; not CMYK, PNG, WebP
        if plain:
            assert item["image"].format is None and not item["image"].info, extension
    with_exif = encoded(photo(), "JPEG", quality=90, exif=rotated_exif())
    assert plain_jpeg_frame(encoded(photo(), "JPEG", quality=90)) == (40, 24, 3)
    assert plain_jpeg_frame(with_exif) is None  # Image.open keeps its EXIF (orientation) in info


def test_jpegs_keep_their_metadata_and_pillows_pixel_limit(dataset_factory, monkeypatch):
    with_exif = encoded(photo(), "JPEG", quality=90, exif=rotated_exif())
    root, keys = dataset_factory([2], image=lambda row: {"jpg": [with_exif, encoded(photo(), "JPEG")][row]})
    first = next(iter(mmdata.stream(root, shuffle=False)))
    assert first["image"].getexif()[0x0112] == 6
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40 x 24 is over twice the limit: Pillow refuses
    dataset = mmdata.stream(root, shuffle=False, on_error="skip", decode_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert list(dataset) == []
    assert all("decompression bomb" in str(error) for error in dataset.errors) and len(dataset.errors) == 2


def test_decode_threads_change_nothing_but_speed(dataset_factory):
    good = [encoded(photo(seed=seed), "JPEG", quality=90) for seed in range(3)]
    broken = good[0][: len(good[0]) // 2]
    root, keys = dataset_factory([7, 9, 5], image=lambda row: {"jpg": broken if row % 6 == 4 else good[row % 3]})
    runs = {}
    for threads in (1, 3):
        dataset = mmdata.stream(root, seed=5, on_error="skip", decode_threads=threads, decode="tensor",
                                image_transform=lambda image: image.flip(1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            items = list(dataset)
        runs[threads] = ([item["key"] for item in items], [item["image"] for item in items],
                         [error.key for error in dataset.errors])
    assert runs[1][0] == runs[3][0] and len(runs[1][0]) == len(keys) - 3
    assert all(torch.equal(left, right) for left, right in zip(runs[1][1], runs[3][1]))
    assert runs[1][2] == runs[3][2] and len(runs[1][2]) == 3
    with pytest.raises(mmdata.stream.reader.StreamError):
        list(mmdata.stream(root, shuffle=False, decode_threads=3))


def test_simplejpeg_gives_pillows_pixels_within_the_tolerance(mixed_images):
    root, keys = mixed_images
    for decode in ("pil", "tensor"):
        items = list(mmdata.stream(root, shuffle=False, decode=decode, jpeg_decoder="simplejpeg"))
        assert [item["key"] for item in items] == keys
        for (extension, data, by_simplejpeg), item in zip(IMAGES, items):
            assert (simplejpeg_rgb(data) is not None) == by_simplejpeg, extension
            if decode == "pil" and by_simplejpeg:
                assert item["image"].format is None, "decoded by simplejpeg, not opened by Pillow"
            got, expected = pixels(item).astype(np.int16), todays_pixels(data).astype(np.int16)
            assert got.shape == expected.shape, extension
            assert np.abs(got - expected).max() <= SIMPLEJPEG_TOLERANCE, extension


def test_simplejpeg_decodes_or_fails_on_the_same_samples_as_pillow(dataset_factory):
    good = encoded(photo(), "JPEG", quality=90)
    marker = good.index(b"\xff\xdb")
    members = [
        good,
        good[: len(good) * 2 // 3],  # truncated: both refuse
        good[:marker] + b"\x00\x01\x02" + good[marker:],  # stray bytes: Pillow decodes, simplejpeg hands it over
        b"\xff\xd8\xff" + b"not a jpeg" * 20,
    ]
    root, keys = dataset_factory([len(members)], image=lambda row: {"jpg": members[row]})
    outcomes = {}
    for decoder in ("pillow", "simplejpeg"):
        dataset = mmdata.stream(root, shuffle=False, on_error="skip", jpeg_decoder=decoder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcomes[decoder] = {item["key"]: pixels(item) for item in dataset}
        assert sorted(error.key for error in dataset.errors) == [keys[1], keys[3]]
    assert outcomes["pillow"].keys() == outcomes["simplejpeg"].keys() == {keys[0], keys[2]}
    for key in outcomes["pillow"]:
        assert np.array_equal(outcomes["pillow"][key], outcomes["simplejpeg"][key])


def test_tensors_travel_through_dataloader_workers(dataset_factory):
    root, keys = dataset_factory([5, 4])
    loader = mmdata.stream(root, decode="tensor").loader(batch_size=3, num_workers=2)
    batches = list(loader)
    assert sorted(key for batch in batches for key in batch["key"]) == sorted(keys)
    assert all(batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 8, 8) for batch in batches)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"jpeg_decoder": "turbo"}, "jpeg_decoder must be one of"),
        ({"jpeg_decoder": "simplejpeg", "decode": None}, "has nothing to decode with decode=None"),
        ({"decode": "numpy"}, "decode must be one of"),
        ({"decode_threads": 0}, "decode_threads must be at least 1"),
    ],
)
def test_bad_decode_options_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        StreamOptions(**values)


def test_missing_simplejpeg_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # an import of it now fails, as when not installed
    with pytest.raises(ValueError, match="pip install simplejpeg"):
        StreamOptions(jpeg_decoder="simplejpeg")
