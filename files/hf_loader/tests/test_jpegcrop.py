"""Crop-window decode (libjpeg-turbo 3): the same pixels as a full decode of the same box."""

from __future__ import annotations

import importlib.util
import io
import random

import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image

from hf_loader import fixtures, jpegcrop, transforms
from hf_loader.transforms import TrainTransform, random_resized_crop_params

# The production lock installs the `turbojpeg` wheel, which bundles libjpeg-turbo 3: where it
# is installed, crop decode must load (a silent fall back to full decode would hide a bug).
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("turbojpeg") is None, reason="turbojpeg wheel not installed"
)


def _jpeg(seed: int, subsampling: int = 2, mode: str = "RGB", size=(409, 347)) -> bytes:
    img = Image.open(io.BytesIO(fixtures.synthetic_jpeg(seed, size=size, quality=95)))
    out = io.BytesIO()
    img.convert(mode).save(out, "JPEG", quality=95, subsampling=subsampling)
    return out.getvalue()


def test_loads_the_bundled_library():
    assert transforms.CROP_DECODER is not None
    assert transforms.DECODER == "libjpeg-turbo-crop"


@pytest.mark.parametrize(
    ("subsampling", "mode"), [(0, "RGB"), (1, "RGB"), (2, "RGB"), (2, "L")], ids=str
)
def test_window_equals_full_decode_of_the_same_box(subsampling, mode):
    """4:4:4, 4:2:2, 4:2:0 and greyscale; boxes drawn as the train transform draws them."""
    decoder = transforms.CROP_DECODER
    rng = random.Random(subsampling)
    for seed in range(6):
        data = _jpeg(seed, subsampling, mode)
        full = simplejpeg.decode_jpeg(data, colorspace="RGB")
        assert decoder.size(data) == full.shape[:2]
        for _ in range(5):
            top, left, h, w = random_resized_crop_params(*full.shape[:2], rng)
            window = decoder.decode(data, top, left, h, w)
            expected = full[top : top + h, left : left + w]
            assert window.shape == expected.shape
            diff = np.abs(window.astype(np.int16) - expected.astype(np.int16))
            # JPEG rounding: chroma upsampling differs only next to the window's edges
            assert diff.mean() < 0.05, (seed, top, left, h, w, diff.mean())
            assert np.percentile(diff, 99.5) <= 2


def test_whole_image_box_is_exact():
    data = _jpeg(3)
    h, w = transforms.CROP_DECODER.size(data)
    window = transforms.CROP_DECODER.decode(data, 0, 0, h, w)
    assert np.array_equal(window, simplejpeg.decode_jpeg(data, colorspace="RGB"))


def test_train_transform_same_crop_with_or_without_window_decode():
    data = _jpeg(5)
    cropped = TrainTransform(seed=11, crop_decode=True)
    whole = TrainTransform(seed=11, crop_decode=False)
    for _ in range(10):
        a, b = cropped(data), whole(data)
        assert a.shape == b.shape == (3, 224, 224)
        assert (a.float() - b.float()).abs().mean().item() < 0.1


def test_cmyk_and_corrupt_jpegs_fall_back_to_full_decode():
    img = Image.open(io.BytesIO(_jpeg(1))).convert("CMYK")
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    cmyk = out.getvalue()
    # The header reads; the pixels cannot be turned into RGB by the crop decoder.
    assert transforms.CROP_DECODER.size(cmyk) == img.size[::-1]
    with pytest.raises(jpegcrop.CropDecodeError, match="color conversion"):
        transforms.CROP_DECODER.decode(cmyk, 0, 0, 10, 10)
    t = TrainTransform(seed=0)
    assert t(cmyk).shape == (3, 224, 224)  # PIL decodes it, as before
    truncated = _jpeg(2)[:2000]
    # The header is whole, the data is cut: the decode, not the header, is refused.
    assert transforms.CROP_DECODER.size(truncated) == img.size[::-1]
    with pytest.raises(jpegcrop.CropDecodeError, match="Premature end"):
        transforms.CROP_DECODER.decode(truncated, 0, 0, 50, 50)
    # A start-of-image marker and nothing more reads as a tables-only stream: no error, and
    # the size of the handle's last image, or -1 x -1 on a new handle (refused). The stale
    # size is harmless: the decode fails and the full decoder reports the image.
    fresh = jpegcrop.CropDecoder(transforms.CROP_DECODER.library_path)
    with pytest.raises(jpegcrop.CropDecodeError, match="no frame header"):
        fresh.size(b"\xff\xd8" + bytes(200))
    assert transforms.CROP_DECODER.size(_jpeg(2)) == img.size[::-1]
    with pytest.raises(jpegcrop.CropDecodeError):
        transforms.CROP_DECODER.decode(b"\xff\xd8" + bytes(200), 0, 0, 50, 50)
    with pytest.raises(OSError, match="truncated"):  # the full decoder reports it, as before
        TrainTransform(seed=0)(truncated)


def test_each_forked_worker_uses_its_own_handle():
    data = [_jpeg(s) for s in range(8)]
    loader = torch.utils.data.DataLoader(
        [(d, i) for i, d in enumerate(data)],
        batch_size=4,
        num_workers=2,
        collate_fn=lambda rows: torch.stack([TrainTransform(seed=0)(d) for d, _ in rows]),
    )
    batches = list(loader)
    assert [b.shape for b in batches] == [(4, 3, 224, 224)] * 2


def test_library_search_order_and_switch(tmp_path):
    assert jpegcrop.candidate_libraries({jpegcrop.ENV_LIBRARY: "none"}) == []
    assert jpegcrop.load({jpegcrop.ENV_LIBRARY: "none"}) is None
    assert jpegcrop.candidate_libraries({jpegcrop.ENV_LIBRARY: "/x/lib.so"}) == ["/x/lib.so"]
    assert jpegcrop.load({jpegcrop.ENV_LIBRARY: str(tmp_path / "missing.so")}) is None
    found = jpegcrop.candidate_libraries({})
    assert found[-1].endswith(tuple(f".so.0.{n}.0" for n in range(3, 10)))  # the bundled copy
    assert str(jpegcrop.OFFICIAL_PACKAGE_LIBRARY) in found


def test_library_without_turbojpeg3_is_refused():
    import ctypes.util

    libc = ctypes.util.find_library("c")
    with pytest.raises(OSError, match="TurboJPEG 3"):
        jpegcrop.CropDecoder(libc)
