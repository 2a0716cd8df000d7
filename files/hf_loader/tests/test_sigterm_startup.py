"""SIGTERM while hf-train or its launcher is still starting: a real process and a real signal.

The windows attacked are the long ones before training: resolving the dataset (after Composer's
import installed its own `sys.exit(143)` handler) and, for the launcher, importing Composer. The
process is held at the start of that step (a file it waits for) only so that the signal lands
there every time; the step itself then runs for real. A stop there must end as documented
(exit 0, the ranks stopped before their first batch), not with 143 or death by the signal,
which systemd records as a failed unit while the job's other nodes wait for this one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATASET

# Runs hf-train's main with resolve() held at its start until the go file exists.
HOLD_RESOLVE = """
import sys, time
from pathlib import Path
import hf_loader.resolve as resolve_module

held, go = Path(sys.argv[1]), Path(sys.argv[2])
real_resolve = resolve_module.resolve

def resolve_when_told(*args, **kwargs):
    held.write_text("in resolve\\n")
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return real_resolve(*args, **kwargs)

resolve_module.resolve = resolve_when_told
from hf_loader import train
sys.exit(train.main(sys.argv[3:]))
"""

# Runs the launcher's main with the first import of composer held until the go file exists.
HOLD_COMPOSER_IMPORT = """
import sys, time
from pathlib import Path

held, go = Path(sys.argv[1]), Path(sys.argv[2])

class HoldComposerImport:
    def find_spec(self, name, path=None, target=None):
        if name == "composer":
            sys.meta_path.remove(self)
            held.write_text("importing composer\\n")
            deadline = time.monotonic() + 120
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return None  # the ordinary finders import it

sys.meta_path.insert(0, HoldComposerImport())
from hf_loader import launch
sys.exit(launch.main(sys.argv[3:]))
"""


def _signal_while_held(command: list[str], held: Path, go: Path) -> subprocess.CompletedProcess:
    """Start `command`, SIGTERM it once it is held, let it go on, and wait for its end."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not held.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"never reached the held step (exit {process.returncode}):\n{err[-3000:]}")
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    time.sleep(1)  # the handler runs at once; the old one ended the process here
    go.write_text("go\n")
    out, err = process.communicate(timeout=240)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_sigterm_while_resolving_stops_before_the_first_batch_with_exit_0(arrow_only, tmp_path):
    save = tmp_path / "checkpoints"
    config = tmp_path / "train.yaml"
    config.write_text(
        f"dataset: {DATASET}\ndevice: cpu\nbatch_size: 2\neval_batch_size: 2\nworkers: 0\n"
        "crop_size: 64\nval_resize: 72\nmax_duration: 3ba\nwarmup: 0ba\n"
        "eval_interval: 1ep\neval_subset_num_batches: 1\nspeed_window: 0\n"
        f"save_folder: {save}/{{run_name}}\nsave_interval: 100ep\n"
        "run_name: resnet50-startup\nautoresume: true\n"
    )
    held, go = tmp_path / "held", tmp_path / "go"
    command = [sys.executable, "-c", HOLD_RESOLVE, str(held), str(go)]
    done = _signal_while_held([*command, "--config-file", str(config)], held, go)

    assert done.returncode == 0, f"exit {done.returncode}, not a clean stop:\n{done.stderr[-3000:]}"
    assert (
        "hf-train: stopped by SIGTERM after batch 0, no new checkpoint: no batch was trained"
        in done.stdout
    ), done.stdout + done.stderr[-3000:]
    assert "[batch=1/" not in done.stderr, "a batch was trained after the stop"


def test_sigterm_while_the_launcher_imports_composer_starts_no_rank_and_exits_0(tmp_path):
    held, go = tmp_path / "held", tmp_path / "go"
    rank_ran = tmp_path / "rank-ran"
    command = [sys.executable, "-c", HOLD_COMPOSER_IMPORT, str(held), str(go)]
    command += ["--stop-timeout", "30", "-n", "1"]
    command += ["-c", "touch", str(rank_ran)]
    done = _signal_while_held(command, held, go)

    assert done.returncode == 0, f"exit {done.returncode}, not a clean stop:\n{done.stderr[-3000:]}"
    assert "stopped by SIGTERM while starting, before any rank was started" in done.stderr
    assert not rank_ran.exists(), "a rank was started after the unit was told to stop"
