"""The GPU path of hf-train on CUDA, for real: pinned host batches, amp_bf16 and cudnn_benchmark
through `hf_loader.train.train` (Composer's Trainer.fit of ResNet-50, two batches, tiny cache).

Marked `gpu`: without -m naming them, conftest.py deselects them, so the CPU run neither
runs nor skips them (the skip policy counts them as deselected). scripts/gpu-host-check.sh
runs them on a GPU host (its `pytest` step: `pytest -m gpu`). Run on a host without CUDA they
fail, naming why: a GPU test that skipped would say nothing about the GPU path.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DATASET

from hf_loader import train
from hf_loader.data import LoaderConfig, build_dataloader

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def cuda():
    """Fail, not skip, where CUDA is missing; leave cuDNN's benchmark switch as it was."""
    if not torch.cuda.is_available():
        pytest.fail(
            f"CUDA is not available to torch {torch.__version__}"
            f" (built for CUDA {torch.version.cuda}): the gpu tests need a GPU host with its"
            " driver loaded. Run them there (scripts/gpu-host-check.sh, step pytest); the CPU"
            " run deselects them",
            pytrace=False,
        )
    benchmark = torch.backends.cudnn.benchmark
    yield torch.device("cuda")
    torch.backends.cudnn.benchmark = benchmark


def train_on_gpu(tmp_path, *flags: str):
    """hf-train's config from a file and flags, as the unit runs it, then train() with a probe;
    returns (trainer, what the probe saw)."""
    from composer.core import Callback

    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(
        f"dataset: {DATASET}\nbatch_size: 4\neval_batch_size: 4\nworkers: 2\n"
        "max_duration: 2ba\nwarmup: 0ba\nlr: 0.1\neval_subset_num_batches: 1\nspeed_window: 1\n"
    )
    cfg = train.build_config(["--config-file", str(cfg_file), *flags])
    assert cfg["device"] is None  # chosen by train(): gpu where CUDA is
    seen: dict[str, list] = {"host": [], "device": [], "conv1": []}

    class Probe(Callback):
        def fit_start(self, state, logger):
            seen["benchmark"] = torch.backends.cudnn.benchmark
            seen["precision"] = state.precision.value
            conv1 = state.model.module[1].conv1
            conv1.register_forward_hook(lambda _m, _i, out: seen["conv1"].append(out.dtype))

        def after_dataloader(self, state, logger):
            # Composer moves the batch to the device later, per microbatch: this is the host batch.
            images, labels = state.batch
            seen["host"].append((images.device.type, images.is_pinned(), labels.is_pinned()))

        def before_forward(self, state, logger):
            images, _ = state.batch
            contiguous = images.is_contiguous(memory_format=torch.channels_last)
            seen["device"].append((images.device.type, images.dtype, contiguous))

    trainer = train.train(cfg, callbacks=[Probe()])
    return trainer, seen


def test_training_on_cuda_pins_batches_casts_to_bf16_and_benchmarks_cudnn(
    cuda, arrow_only, tmp_path, no_network
):
    trainer, seen = train_on_gpu(tmp_path)
    assert int(trainer.state.timestamp.batch) == 2
    assert trainer.state.device.name == "gpu"
    # pinned memory: the DataLoader pins (default None: where CUDA is), and each host batch
    # arrives pinned through the ring buffers' pin_memory (workers > 0, reuse_batch_memory)
    assert trainer.state.train_dataloader.pin_memory is True
    assert seen["host"] == [("cpu", True, True)] * 2
    # on the device: normalized float, NHWC (channels_last)
    assert seen["device"] == [("cuda", torch.float32, True)] * 2
    # amp_bf16 by default on gpu: the convolutions compute in bfloat16, the weights stay float32
    assert seen["precision"] == "amp_bf16"
    assert seen["conv1"] and set(seen["conv1"]) == {torch.bfloat16}
    weight = trainer.state.model.module[1].conv1.weight
    assert weight.device.type == "cuda" and weight.dtype == torch.float32
    assert math.isfinite(float(trainer.state.loss))
    # cudnn_benchmark: on by default, set before the Trainer ran
    assert seen["benchmark"] is True
    assert torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled
    assert not no_network


def test_precision_and_cudnn_benchmark_follow_the_config(cuda, arrow_only, tmp_path):
    torch.backends.cudnn.benchmark = True
    trainer, seen = train_on_gpu(tmp_path, "--precision", "fp32", "--cudnn-benchmark", "false")
    assert int(trainer.state.timestamp.batch) == 2
    assert seen["precision"] == "fp32" and set(seen["conv1"]) == {torch.float32}
    assert seen["benchmark"] is False


@pytest.mark.parametrize("reuse_batch_memory", [True, False])
def test_loader_pins_host_batches_where_cuda_is(cuda, arrow_only, reuse_batch_memory):
    """Both collate paths (workers' ring buffers, plain batches) hand over pinned memory, and a
    pinned batch copies to the GPU without blocking the host."""
    from hf_loader.resolve import load_split, resolve

    ds = load_split(resolve(DATASET), "train")
    config = LoaderConfig(batch_size=4, workers=2, reuse_batch_memory=reuse_batch_memory)
    loader = build_dataloader(ds, True, config, 0, 1)
    assert loader.pin_memory is True
    images, labels = next(iter(loader))
    assert images.is_pinned() and labels.is_pinned()
    on_gpu = images.to(cuda, non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(on_gpu.cpu(), images)
