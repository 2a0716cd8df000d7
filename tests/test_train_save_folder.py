"""playbooks/train.yml and a multi-node job's checkpoints: the real playbook on this machine.

Only rank 0 writes checkpoints, into its own host's save_folder; with autoresume, every host
looks for rank 0's checkpoint there at the next start, and hf-train exits 2 on a folder the
other hosts cannot see. The attack: start a two-host job with autoresume on a save_folder that
is not declared shared (each host's own /data/checkpoints). train.yml must refuse it on every
host of the job before anything changes, naming the variables and both fixes; the test fails
if a launcher environment or a job record is written. A shared folder (declared), a single-node
job and a job without autoresume still pass.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from conftest import run_playbook

RESUMING = {"save_folder": "/data/checkpoints/{run_name}", "run_name": "resnet50-imagenet", "autoresume": True}


def write_fleet(tmp_path: Path, hosts: dict[str, tuple[str, dict, dict]]) -> Path:
    """Ready hosts of this machine (local connection): name -> (the copy its passed cache test
    read: arrow or streaming, its job's training configuration, its other variables). Each has
    its own hf_loader folders under tmp_path. Hosts of one copy kind form one job (train.yml)."""
    inventory = {}
    for name, (mode, job_config, more) in hosts.items():
        config = tmp_path / name / "etc-hf-loader"
        config.mkdir(parents=True)
        (config / "train-default.yaml").write_text(yaml.safe_dump(job_config))
        report = tmp_path / name / "cache-test.json"
        report.write_text(json.dumps({"ready": True, "resolution": {"mode": mode}, "message": "ready"}))
        inventory[name] = {
            "ansible_connection": "local",
            "ansible_become": False,
            "ansible_python_interpreter": sys.executable,
            "hf_loader_cordon_dir": str(tmp_path / name / "cordon"),
            "hf_loader_config_dir": str(config),
            "hf_loader_report_file": str(report),
            "hf_loader_group": "root",  # the launcher environment's group; no training account here
            **more,
        }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"gpu_hosts": {"hosts": inventory}}))
    return path


def train(inventory: Path) -> tuple[int, str]:
    # No facts needed: rank 0's address falls back to 127.0.0.1.
    return run_playbook(inventory, "train.yml", env={"ANSIBLE_GATHERING": "explicit"})


def launched(tmp_path: Path, name: str) -> str | None:
    """The launcher environment train.yml wrote for the host's job (None: none), after checking
    that the job record came with it: the two files train.yml writes before it starts the unit."""
    config = tmp_path / name / "etc-hf-loader"
    written = sorted(path.name for path in config.iterdir() if path.name != "train-default.yaml")
    if not written:
        return None
    assert written == ["job-default.json", "launch-default.env"], written
    return (config / "launch-default.env").read_text()


def test_a_multi_node_job_resuming_from_unshared_folders_is_refused_before_any_change(tmp_path):
    """gpu-01 and gpu-02 (one job) resume from their own disks: refused on both, nothing written.
    gpu-03 trains alone (hf_loader_train_multi_node: false) on the same settings: it finds its own
    checkpoints, so the same run starts it."""
    alone = {"hf_loader_train_multi_node": False}
    inventory = write_fleet(
        tmp_path,
        {
            "gpu-01": ("arrow", RESUMING, {}),
            "gpu-02": ("arrow", RESUMING, {}),
            "gpu-03": ("streaming", RESUMING, alone),
        },
    )
    rc, out = train(inventory)
    assert rc != 0
    message = " ".join(out.split())
    for name in ("gpu-01", "gpu-02"):
        assert f"Not starting training job default on {name}: it spans 2 hosts (gpu-01, gpu-02)" in message, out
        assert launched(tmp_path, name) is None, f"train.yml changed {name} before refusing the job"
    assert "save_folder /data/checkpoints/{run_name} is not declared shared on gpu-01, gpu-02" in message
    assert "hf_loader_train_save_folder_shared: true" in message  # fix 1: a shared filesystem
    assert "hf_loader_train_multi_node: false" in message  # fix 2: a single-node job
    assert "Not starting training job default on gpu-03" not in message
    assert "WORLD_SIZE=1\n" in (launched(tmp_path, "gpu-03") or ""), out[-3000:]


def test_jobs_that_find_their_checkpoints_pass_the_check(tmp_path):
    """A job whose save_folder is declared shared, and a job without autoresume: both start with
    every host (past the check; the unit's start then fails here, no hf-train@ unit on this machine)."""
    shared = {"hf_loader_train_save_folder_shared": True}
    inventory = write_fleet(
        tmp_path,
        {
            "gpu-01": ("arrow", RESUMING, shared),
            "gpu-02": ("arrow", RESUMING, shared),
            "gpu-03": ("streaming", {**RESUMING, "autoresume": False}, {}),
            "gpu-04": ("streaming", {**RESUMING, "autoresume": False}, {}),
        },
    )
    _, out = train(inventory)
    assert "Not starting training job" not in out, out[-3000:]
    for name in ("gpu-01", "gpu-02", "gpu-03", "gpu-04"):
        assert "WORLD_SIZE=2\n" in (launched(tmp_path, name) or ""), out[-3000:]
