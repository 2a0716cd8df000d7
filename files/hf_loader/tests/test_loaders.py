"""Transforms and DataLoaders: same meaning as the torchvision pipeline, workers, sampler."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import DATASET
from PIL import Image
from torch.utils.data import DistributedSampler

from hf_loader import fixtures
from hf_loader.data import LoaderConfig, build_dataloader, make_dataspec
from hf_loader.resolve import load_split, resolve
from hf_loader.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainTransform,
    ValTransform,
    normalize_batch,
    random_resized_crop_params,
)


@pytest.fixture(scope="module")
def jpeg():
    return fixtures.synthetic_jpeg(7, size=(400, 350), quality=95)


def test_val_transform_matches_torchvision(jpeg):
    from torchvision import transforms as T  # noqa: N812

    ref = T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    expected = ref(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    ours = ValTransform(output="float")(jpeg)
    assert ours.shape == expected.shape == (3, 224, 224)
    # different JPEG decoders/resamplers: same picture within a few grey levels
    assert (ours - expected).abs().mean().item() < 0.05
    u8 = ValTransform(output="uint8")(jpeg)
    assert u8.dtype == torch.uint8
    assert torch.allclose(normalize_batch((u8[None], torch.zeros(1)))[0][0], ours, atol=1e-5)


def test_train_transform_crop_flip_shapes(jpeg):
    t = TrainTransform(output="uint8", seed=1)
    outs = [t(jpeg) for _ in range(8)]
    assert all(o.shape == (3, 224, 224) and o.dtype == torch.uint8 for o in outs)
    assert len({o.float().mean().item() for o in outs}) > 1  # random crops differ
    f = TrainTransform(output="float", seed=1)(jpeg)
    assert f.dtype == torch.float32 and -3 < f.mean().item() < 3


def test_rrc_params_follow_torchvision_bounds():
    import random

    rng = random.Random(0)
    for _ in range(500):
        top, left, h, w = random_resized_crop_params(350, 400, rng)
        assert top >= 0 and top + h <= 350 and left >= 0 and left + w <= 400
        assert 0.08 * 350 * 400 * 0.9 <= h * w <= 350 * 400


def test_non_jpeg_images_decode(jpeg):
    png = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(png, "PNG")
    a = ValTransform()(png.getvalue())
    b = ValTransform()(jpeg)
    assert a.shape == b.shape
    assert (a.float() - b.float()).abs().mean() < 3


def test_arrow_loader_workers_and_pinning(arrow_only, no_network):
    ds = load_split(resolve(DATASET), "train")
    cfg = LoaderConfig(batch_size=4, workers=2, pin_memory=False, persistent_workers=True)
    loader = build_dataloader(ds, train=True, cfg=cfg, rank=0, world_size=1)
    assert loader.num_workers == 2 and loader.persistent_workers
    assert not loader.pin_memory  # pinned only where CUDA is (default None)
    labels = []
    for _ in range(2):  # two epochs with persistent workers
        for x, y in loader:
            assert x.shape == (4, 3, 224, 224) and x.dtype == torch.uint8
            labels.extend(y.tolist())
    assert sorted(labels) == sorted([i % 3 for i in range(12)] * 2)
    assert not no_network


def test_distributed_sampler_from_launcher_env(arrow_only, monkeypatch):
    ds = load_split(resolve(DATASET), "validation")
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = build_dataloader(ds, train=False, cfg=LoaderConfig(batch_size=3, workers=0))
        assert isinstance(loader.sampler, DistributedSampler)
        assert loader.sampler.rank == rank and loader.sampler.num_replicas == 2
        seen.append(list(iter(loader.sampler)))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(6))


def test_streaming_loader_splits_shards_between_workers(hub_only, no_network):
    res = resolve(DATASET)
    ds = load_split(res, "train")
    loader = build_dataloader(ds, train=False, cfg=LoaderConfig(batch_size=2, workers=2))
    n = sum(x.shape[0] for x, _ in loader)
    assert n == 12  # 2 parquet shards, 2 workers, no duplicates
    assert not no_network


def test_streaming_loader_by_node(hub_only):
    ds = load_split(resolve(DATASET), "train")
    counts = []
    for rank in (0, 1):
        loader = build_dataloader(
            ds, train=True, cfg=LoaderConfig(batch_size=2, workers=0), rank=rank, world_size=2
        )
        counts.append(sum(x.shape[0] for x, _ in loader))
    assert sum(counts) == 12 and counts[0] > 0 and counts[1] > 0


def test_dataspec_normalizes_uint8_on_device():
    loader = torch.utils.data.DataLoader(
        [(torch.full((3, 4, 4), 255, dtype=torch.uint8), 0)] * 2, batch_size=2
    )
    spec = make_dataspec(loader)
    x, y = spec.microbatch_transforms(next(iter(loader)))
    assert x.dtype == torch.float32
    expected = (1.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert np.allclose(x[0, :, 0, 0].numpy(), expected, atol=1e-5)


def test_resize_keeps_hwc_memory_and_equals_interpolate():
    from hf_loader.transforms import _resize_hwc

    rng = np.random.default_rng(0)
    for h, w in [(100, 130), (347, 409), (224, 224), (500, 90)]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = _resize_hwc(arr, (224, 224))
        chw = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()
        ref = torch.nn.functional.interpolate(
            chw, size=(224, 224), mode="bilinear", antialias=True, align_corners=False
        )[0]
        assert torch.equal(ours, ref)
        assert ours.permute(1, 2, 0).is_contiguous()  # HWC memory, CHW shape


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32], ids=str)
@pytest.mark.parametrize("workers", [0, 2])
def test_collate_nhwc_equals_default_collate(dtype, workers):
    from torch.utils.data import DataLoader
    from torch.utils.data._utils.collate import default_collate

    from hf_loader.batches import collate_nhwc

    hwc = torch.arange(3 * 5 * 7, dtype=dtype).reshape(5, 7, 3).permute(2, 0, 1)
    samples = [((hwc if i % 2 else hwc.contiguous()) + i, i) for i in range(8)]
    expected = default_collate(samples)
    batches = list(DataLoader(samples, batch_size=4, num_workers=workers, collate_fn=collate_nhwc))
    assert torch.equal(torch.cat([x for x, _ in batches]), expected[0])
    assert torch.equal(torch.cat([y for _, y in batches]), expected[1])
    x = batches[0][0]
    assert x.shape == (4, 3, 5, 7) and x.is_shared() == (workers > 0)  # written by the worker
    # the layout follows the samples: uint8 HWC memory stacks as NHWC, CHW memory as NCHW
    nhwc = DataLoader([(hwc, 0)] * 2, batch_size=2, collate_fn=collate_nhwc)
    assert next(iter(nhwc))[0].is_contiguous(memory_format=torch.channels_last)
    nchw = DataLoader([(hwc.contiguous(), 0)] * 2, batch_size=2, collate_fn=collate_nhwc)
    assert next(iter(nchw))[0].is_contiguous()
