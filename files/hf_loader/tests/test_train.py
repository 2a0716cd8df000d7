"""hf-train: a real Composer Trainer.fit of ResNet-50 on CPU, two batches, tiny cache."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATASET

from hf_loader import train
from hf_loader.cli.exitcodes import ExitCode
from hf_loader.errors import ConfigError


def test_composer_resnet50_two_batches(arrow_only, tmp_path, no_network):
    from composer.core import Callback

    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(
        f"dataset: {DATASET}\nbatch_size: 2\neval_batch_size: 2\nworkers: 2\n"
        "max_duration: 1ep\nwarmup: 0ba\neval_subset_num_batches: 1\n"
    )
    cfg = train.build_config(
        ["--config-file", str(cfg_file), "--max-duration", "2ba", "--device", "cpu"]
        + ["--speed-window", "1"]
    )
    assert cfg["max_duration"] == "2ba" and cfg["batch_size"] == 2  # flag wins over file

    seen = []

    class Inputs(Callback):
        def before_forward(self, state, logger):
            x, _ = state.batch
            seen.append((x.dtype, x.device.type, float(x.float().mean())))
            layouts.append(x.is_contiguous(memory_format=torch.channels_last))

    layouts = []

    first = {}

    class Weights(Callback):
        def fit_start(self, state, logger):
            w = state.model.module[1].conv1.weight
            first["w"] = w.detach().clone()

    from composer.loggers import InMemoryLogger

    logged = InMemoryLogger()
    trainer = train.train(cfg, callbacks=[Inputs(), Weights()], loggers=[logged])
    assert int(trainer.state.timestamp.batch) == 2
    # speed_window: Composer's SpeedMonitor logs the training throughput
    assert logged.data["throughput/samples_per_sec"][-1][1] > 0
    assert type(trainer.state.model.module[1]).__name__ == "ResNet"
    assert trainer.state.model.num_classes == 3
    # the uint8 batches reached the model normalized, as float, on the training device
    assert seen and all(d == torch.float32 and dev == "cpu" and abs(m) < 3 for d, dev, m in seen)
    w = trainer.state.model.module[1].conv1.weight
    assert not torch.equal(first["w"], w.detach())  # the optimizer stepped
    # the device levers on by default: NHWC model and batches, the multi-tensor optimizer
    assert w.is_contiguous(memory_format=torch.channels_last) and all(layouts)
    assert type(trainer.state.optimizers[0]).__name__ == "ForeachDecoupledSGDW"
    assert not no_network


def test_unknown_config_key_is_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"batchsize": 3}))
    with pytest.raises(ConfigError) as ei:
        train.build_config(["--config-file", str(bad)])
    assert "batch_size" in ei.value.remedy
    assert train.main(["--config-file", str(bad)]) == ExitCode.USAGE
    assert "unknown config keys" in capsys.readouterr().err


def test_not_cached_exit_code(home, capsys):
    assert train.main(["--dataset", "acme/nothing", "--device", "cpu"]) == 3
    assert "not cached" in capsys.readouterr().err


def test_example_config_is_valid():
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "train.yaml"
    cfg = train.build_config(["--config-file", str(example), "--workers", "4"])
    assert cfg["workers"] == 4 and cfg["max_duration"] == "90ep" and cfg["output"] == "uint8"


def test_composer_launcher_two_processes_cpu(arrow_only, tmp_path):
    """Composer's launcher sets RANK/WORLD_SIZE/MASTER_*; two CPU ranks (gloo on loopback)
    each train on their half of the data through a DistributedSampler."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = Path(sys.executable).with_name("composer")
    cmd = [
        str(launcher),
        "-n",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "--stdout",
        str(tmp_path / "rank{rank}.out"),
        "--stderr",
        str(tmp_path / "rank{rank}.err"),
        "-m",
        "hf_loader.train",
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--eval-split",
        "",
        "--max-duration",
        "2ba",
        "--warmup",
        "0ba",
        "--log-to-console",
        "false",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    rank1 = (tmp_path / "rank1.out").read_text()
    assert "rank 0 of 2, DistributedSampler with 6 samples, 2 batches" in p.stdout
    assert "rank 1 of 2, DistributedSampler with 6 samples, 2 batches" in rank1


@pytest.mark.parametrize(
    ("cpus", "gpus", "workers"),
    [(96, 8, 11), (16, 1, 15), (256, 8, 16), (2, 1, 1), (4, 8, 1), (128, 0, 16)],
)
def test_auto_workers_share_the_cpus_between_gpus(cpus, gpus, workers):
    assert train.auto_workers(cpus, gpus) == workers


@pytest.mark.parametrize("bad", [-1, "eight", 2.5, True])
def test_bad_workers_is_usage_error_before_loading(bad, capsys):
    assert train.main(["--workers", json.dumps(bad), "--dataset", "none/none"]) == ExitCode.USAGE
    assert "workers must be a count" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("local_world_size", "gpus", "workers"),
    [
        ("1", 0, 16),  # 32 CPUs for one process: 31, capped at 16
        ("4", 8, 7),  # the launcher's 4 processes split the 32 CPUs, not the 8 GPUs: 8 - 1
        ("8", 0, 3),  # 32 // 8 - 1
        (None, 8, 3),  # no launcher: one process per GPU the host has
        (None, 0, 16),  # no launcher, no GPU: one process
    ],
)
def test_workers_auto_shares_the_cpus_this_process_may_use(
    monkeypatch, local_world_size, gpus, workers
):
    """`auto` counts the CPUs in this process's affinity mask (not the machine's) and the
    processes on this host: LOCAL_WORLD_SIZE when a launcher set it, else the GPUs."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    assert train.resolve_workers("auto") == workers
    assert train.resolve_workers(3) == 3


@pytest.mark.parametrize("nesterov", [False, True])
def test_foreach_sgdw_updates_equal_composers_to_the_bit(nesterov, monkeypatch):
    from composer.optim import DecoupledSGDW

    from hf_loader.optim import ForeachDecoupledSGDW

    foreach_calls = []
    foreach_add = torch._foreach_add_

    def counted(*args, **kwargs):
        foreach_calls.append(len(args[0]))
        return foreach_add(*args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_add_", counted)

    def run(optimizer_class):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3),
            torch.nn.BatchNorm2d(4),
            torch.nn.Flatten(),
            torch.nn.LazyLinear(2),
        )
        frozen = torch.nn.Parameter(torch.ones(3))  # no grad: skipped by both
        model(torch.zeros(1, 3, 6, 6))
        opt = optimizer_class(
            [*model.parameters(), frozen],
            lr=0.5,
            momentum=0.875,
            weight_decay=5e-5,
            nesterov=nesterov,
        )
        for step in range(4):
            opt.zero_grad()
            x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(step))
            model(x).square().mean().backward()
            opt.param_groups[0]["lr"] = 0.5 / (step + 1)  # a schedule: decay follows lr/initial_lr
            opt.step()
        return [p.detach().clone() for p in [*model.parameters(), frozen]]

    ours = run(ForeachDecoupledSGDW)
    assert foreach_calls and max(foreach_calls) == 6  # all six trained tensors in one call
    for mine, theirs in zip(ours, run(DecoupledSGDW), strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root")
def test_a_read_only_checkpoint_folder_is_exit_5_naming_it(arrow_only, tmp_path):
    """The host refuses the checkpoint write (a read-only mount): exit 5 naming the folder and
    the fix, not exit 1 with a traceback."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(
        f"dataset: {DATASET}\nbatch_size: 2\neval_batch_size: 2\nworkers: 0\n"
        f"max_duration: 1ba\nwarmup: 0ba\neval_subset_num_batches: 1\nsave_folder: {folder}\n"
        "save_interval: 1ba\nrun_name: ro\ndevice: cpu\n"
    )
    setup = f"mount --bind -o ro {folder} {folder}"
    command = [sys.executable, "-m", "hf_loader.train", "--config-file", str(cfg_file)]
    done = subprocess.run(
        ["unshare", "-m", "sh", "-ec", f'{setup}\nexec "$@"', "sh", *command],
        env=dict(os.environ, HF_HOME=str(arrow_only), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 5, done.stderr[-3000:]
    assert "Read-only file system" in done.stderr and str(folder) in done.stderr
    assert "remount it read-write" in done.stderr and "Traceback" not in done.stderr
