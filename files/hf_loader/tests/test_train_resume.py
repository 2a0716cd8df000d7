"""hf-train stopped by SIGTERM and started again, as hf-train@.service runs it: two CPU ranks
(gloo on loopback) under Composer's launcher through hf_loader.launch, a real Trainer.fit of
ResNet-50 on the tiny cache, a real checkpoint on disk, Composer's own autoresume."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATASET

from hf_loader import train
from hf_loader.cli.exitcodes import ExitCode
from hf_loader.errors import ConfigError

MAX_BATCHES = 5  # 12 samples, 2 ranks, batch 2: 3 batches an epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(tmp_path: Path, logs: Path, stop_timeout: int = 120) -> list[str]:
    """The unit's ExecStart, with the ranks' output in `logs`."""
    logs.mkdir()
    return [
        sys.executable,
        "-m",
        "hf_loader.launch",
        "--stop-timeout",
        str(stop_timeout),
        "-n",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "--stdout",
        str(logs / "rank{rank}.out"),
        "--stderr",
        str(logs / "rank{rank}.err"),
        "-m",
        "hf_loader.train",
        "--config-file",
        str(tmp_path / "train.yaml"),
    ]


def _wait_for(path: Path, pattern: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and re.search(pattern, path.read_text()):
            return
        if process.poll() is not None:
            pytest.fail(f"the job ended ({process.returncode}) before {pattern!r} in {path}")
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"no {pattern!r} in {path} after {timeout} s")


def _timestamp(checkpoint: Path) -> dict:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return state["state"]["timestamp"]["Timestamp"]


def test_sigterm_checkpoints_every_rank_and_a_restart_resumes(arrow_only, tmp_path):
    save = tmp_path / "checkpoints"
    (tmp_path / "train.yaml").write_text(
        f"dataset: {DATASET}\ndevice: cpu\nbatch_size: 2\neval_batch_size: 2\nworkers: 0\n"
        f"crop_size: 64\nval_resize: 72\nmax_duration: {MAX_BATCHES}ba\nwarmup: 0ba\n"
        "eval_interval: 1ep\neval_subset_num_batches: 1\nspeed_window: 0\n"
        f"save_folder: {save}/{{run_name}}\nsave_interval: 100ep\n"
        "run_name: resnet50-test\nautoresume: true\n"
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    # First start: SIGTERM to the launcher only (what systemd's KillMode=mixed does) once
    # rank 0 has started its first batch; rank 1 learns of it only through the all-reduce.
    # Local rank 0 writes to the launcher's own stdout and stderr, the others to their files.
    first = tmp_path / "first"
    command = _job(tmp_path, first)
    with open(first / "rank0.out", "w") as out, open(first / "rank0.err", "w") as err:
        job = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _wait_for(first / "rank0.err", r"\[batch=1/", job, timeout=240)
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=120)
    ranks = [(first / f"rank{r}.out").read_text() for r in (0, 1)]
    assert job.returncode == 0, ((first / "rank0.err").read_text() + "".join(ranks))[-4000:]
    stopped = [
        re.search(r"stopped by SIGTERM after batch (\d+), (.*?) \(rank", text) for text in ranks
    ]
    assert all(stopped), ranks
    step = int(stopped[0].group(1))
    assert int(stopped[1].group(1)) == step, "the ranks stopped at different batches"
    assert 1 <= step < MAX_BATCHES  # the batch in flight was finished, not the whole run
    latest = save / "resnet50-test" / "latest-rank0.pt"
    assert latest.is_symlink()
    assert stopped[0].group(2) == f"checkpoint {latest.resolve()}"
    assert stopped[1].group(2) == "checkpoint written by rank 0"
    stamp = _timestamp(latest)
    assert stamp["batch"] == step and stamp["sample"] == step * 2 * 2  # 2 ranks, batch 2

    # Second start, the same command: Composer's autoresume continues from that checkpoint.
    second = tmp_path / "second"
    command = _job(tmp_path, second)
    with open(second / "rank0.out", "w") as out, open(second / "rank0.err", "w") as err:
        again = subprocess.run(command, env=env, stdout=out, stderr=err, timeout=240)
    ranks = [(second / f"rank{r}.out").read_text() for r in (0, 1)]
    assert again.returncode == 0, ((second / "rank0.err").read_text() + "".join(ranks))[-4000:]
    done = f"{MAX_BATCHES} batches, {MAX_BATCHES * 4} samples, resumed from batch {step} sample"
    done += f" {step * 4})"
    assert all(done in text for text in ranks), ranks
    console = (second / "rank0.err").read_text()
    trained = [int(n) for n in re.findall(rf"\[batch=(\d+)/{MAX_BATCHES}\]", console)]
    assert trained and min(trained) == step + 1 and max(trained) == MAX_BATCHES, trained
    stamp = _timestamp(latest)
    assert stamp["batch"] == MAX_BATCHES and stamp["sample"] == MAX_BATCHES * 4


@pytest.mark.parametrize(
    ("settings", "named", "fix"),
    [
        ("autoresume: true\nrun_name: r\n", "save_folder is not set", "save_folder: /data/"),
        ("autoresume: true\nsave_folder: /x\n", "run_name is not set", "run_name: resnet50"),
        (
            "autoresume: true\nsave_folder: /x\nrun_name: r\nsave_latest_filename: null\n",
            "save_latest_filename is empty",
            "leave save_latest_filename out",
        ),
        ("autoresume: 'yes'\n", "autoresume must be true or false", "autoresume: true"),
        ("save_folder: ''\n", "save_folder must be a non-empty string", "save_folder"),
        ("save_num_checkpoints_to_keep: -2\n", "save_num_checkpoints_to_keep must be", "-1"),
    ],
)
def test_autoresume_without_what_it_needs_is_a_usage_error_before_loading(
    settings, named, fix, tmp_path, monkeypatch, capsys
):
    for var in ("COMPOSER_RUN_NAME", "RUN_NAME"):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "train.yaml"
    cfg.write_text("dataset: none/none\n" + settings)  # never read: refused first
    with pytest.raises(ConfigError) as ei:
        train.build_config(["--config-file", str(cfg)])
    assert named in ei.value.message and fix in ei.value.remedy
    assert train.main(["--config-file", str(cfg)]) == ExitCode.USAGE
    assert named in capsys.readouterr().err


def test_composer_run_name_variable_counts_as_run_name(tmp_path, monkeypatch):
    # Composer takes COMPOSER_RUN_NAME when run_name is not set: so does the check.
    monkeypatch.setenv("COMPOSER_RUN_NAME", "from-env")
    cfg = train.build_config(["--autoresume", "true", "--save-folder", str(tmp_path)])
    assert cfg["autoresume"] is True and cfg["run_name"] is None


def test_launch_refuses_a_stop_timeout_that_is_not_positive():
    p = subprocess.run(
        [sys.executable, "-m", "hf_loader.launch", "--stop-timeout", "0", "-n", "1", "true"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "--stop-timeout must be > 0" in p.stderr
