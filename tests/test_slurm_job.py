"""Training as a Slurm batch job: playbooks/train.yml's train_launcher, the job's settings and sbatch
options (gpu_fleet.common's slurm_job filters), and the batch script slurm_node renders, run here
with bash over stand-ins for Slurm's commands (scontrol, srun, sbatch, squeue) and the loader's
Python. The real thing (Slurm 22.05, a 2-node Composer job, requeued) is `make lab-slurm-job`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpu_fleet.common.plugins.filter.slurm_job import FilterModule
from ansible_collections.gpu_fleet.common.plugins.filter.train import FilterModule as TrainFilterModule
from ansible_collections.gpu_fleet.common.plugins.module_utils.slurm.job import (
    launcher_problems,
    problems,
    sbatch_options,
    stop_timeout,
    time_seconds,
)

from conftest import run_playbook

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = yaml.safe_load((ROOT / "roles" / "slurm_node" / "defaults" / "main.yml").read_text())
JOB = {
    "train_job": "default",
    "name": "hf-train-default",
    "nodes": 2,
    "ranks_per_node": 8,
    "gres": "gpu:8",
    "time_limit": "",
    "signal_seconds": 600,
    "partition": "",
    "account": "",
    "qos": "",
    "master_port": 7501,
    "user": "trainer",
    "log_dir": "/var/lib/hf-loader",
    "script_dir": "/etc/gpu-fleet/slurm-jobs",
    "venv": "/opt/hf-loader/venv",
    "config_dir": "/etc/hf-loader",
    "environment_file": "/etc/hf-cache/hf.env",
    "extra_options": [],
}


def test_the_launcher_is_systemd_or_slurm():
    assert launcher_problems("systemd") == [] and launcher_problems("slurm") == []
    for bad in ("Slurm", "slrum", "", None, True):
        (problem,) = launcher_problems(bad)
        assert problem.startswith(f"train_launcher must be systemd or slurm (got {bad!r})")
        assert "-e train_launcher=slurm or leave it unset" in problem


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("", None),
        ("UNLIMITED", None),
        ("infinite", None),
        ("90", 5400),
        ("5:30", 330),
        ("1:30:00", 5400),
        ("2-0", 172800),
        ("1-02:03", 93780),
        ("1-02:03:04", 93784),
    ],
)
def test_slurm_time_limits_are_read_as_slurm_reads_them(text, seconds):
    assert time_seconds(text) == seconds


@pytest.mark.parametrize("text", ["1h", "1:2:3:4", "-1", "1-", "a-1"])
def test_a_time_limit_slurm_would_not_take_is_refused(text):
    with pytest.raises(ValueError, match="is not a Slurm time limit"):
        time_seconds(text)


def test_the_default_settings_make_the_documented_sbatch_options():
    role_vars = yaml.safe_load((ROOT / "roles" / "slurm_node" / "vars" / "main.yml").read_text())
    assert set(role_vars["__slurm_node_job"]) == set(JOB)  # the settings the role passes are these
    assert {f"slurm_node_job_{key}" for key in JOB} - {"slurm_node_job_train_job"} | {"slurm_node_job_train"} == {
        key for key in DEFAULTS if key.startswith("slurm_node_job_")
    }
    assert problems(JOB) == []
    assert sbatch_options(JOB) == [
        "--job-name=hf-train-default",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--exclusive",
        "--requeue",
        "--signal=B:TERM@600",
        "--output=/var/lib/hf-loader/%x-%j.out",
        "--chdir=/var/lib/hf-loader",
        "--open-mode=append",
        "--gres=gpu:8",
    ]
    more = {
        **JOB,
        "time_limit": "2-00:00:00",
        "partition": "h200",
        "qos": "high",
        "gres": "",
        "extra_options": ["--constraint=gpu"],
    }
    assert sbatch_options(more)[-4:] == ["--time=2-00:00:00", "--partition=h200", "--qos=high", "--constraint=gpu"]
    assert "--gres" not in " ".join(sbatch_options(more))


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"nodes": 0}, "slurm_node_job_nodes must be a number of nodes >= 1 (got 0)"),
        ({"nodes": "two"}, "slurm_node_job_nodes"),
        ({"ranks_per_node": 0}, "slurm_node_job_ranks_per_node must be >= 1"),
        ({"master_port": 70000}, "slurm_node_job_master_port must be a port 1-65535"),
        ({"signal_seconds": 0}, "slurm_node_job_signal_seconds must be 1-65535"),
        ({"signal_seconds": 70000}, "slurm_node_job_signal_seconds must be 1-65535"),
        ({"time_limit": "2h"}, "slurm_node_job_time_limit: '2h' is not a Slurm time limit"),
        ({"time_limit": "10"}, "slurm_node_job_time_limit '10' (600 s) leaves no time to train"),
        ({"time_limit": "11", "signal_seconds": 600}, "(660 s) leaves no time to train"),
        ({"name": "my job"}, "slurm_node_job_name must be one word"),
        ({"user": ""}, "slurm_node_job_user must be one word"),
        ({"train_job": "../x"}, "slurm_node_job_train_job must be one word"),
        ({"partition": "a b"}, "slurm_node_job_partition must be one word, or empty"),
        ({"gres": "gpu 8"}, "slurm_node_job_gres must be a --gres list"),
        ({"log_dir": "logs"}, "slurm_node_job_log_dir must be an absolute path"),
        ({"log_dir": "/var/log/%u"}, "slurm_node_job_log_dir must be an absolute path"),
        ({"venv": "/opt/my venv"}, "slurm_node_job_venv must be an absolute path"),
        ({"extra_options": ["-C gpu"]}, "slurm_node_job_extra_options must be a list of sbatch options"),
        ({"extra_options": "--constraint=gpu"}, "slurm_node_job_extra_options"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(change, variable):
    found = problems({**JOB, **change})
    assert any(variable in problem for problem in found), found
    with pytest.raises(ValueError, match="slurm_node_job_"):
        sbatch_options({**JOB, **change})


def test_a_time_limit_with_room_to_train_passes():
    assert problems({**JOB, "time_limit": "12", "signal_seconds": 600}) == []


def test_the_launcher_waits_most_of_the_warning_for_the_checkpoint():
    assert stop_timeout(600) == 590 and stop_timeout(60) == 54 and stop_timeout(5) == 4 and stop_timeout(1) == 1


def test_the_filters_are_registered_under_their_names():
    assert set(FilterModule().filters()) == {"slurm_job_problems", "slurm_job_sbatch_options", "slurm_job_stop_timeout"}
    assert set(TrainFilterModule().filters()) == {"train_launcher_problems"}


# The playbook, for real on this machine (local connection), over stand-ins for Slurm's client.
SBATCH = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_SLURM_LOG/sbatch"
cp "$2" "$FAKE_SLURM_LOG/submitted.sbatch"
echo 4242
"""
SQUEUE = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_SLURM_LOG/squeue"
cat "$FAKE_SLURM_LOG/queued" 2>/dev/null || true
"""


def fake_bin(tmp_path: Path, tools: dict[str, str]) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def write_inventory(tmp_path: Path) -> Path:
    local = {
        "ansible_connection": "local",
        "ansible_become": False,
        "ansible_python_interpreter": sys.executable,
    }
    gpu_config = tmp_path / "gpu-01" / "etc-hf-loader"
    gpu_config.mkdir(parents=True, exist_ok=True)
    (gpu_config / "train-default.yaml").write_text("{}\n")
    report = tmp_path / "gpu-01" / "cache-test.json"
    report.write_text(json.dumps({"ready": True, "resolution": {"mode": "arrow"}, "message": "ready"}))
    inventory = {
        "gpu_hosts": {
            "hosts": {
                "gpu-01": {
                    **local,
                    "hf_loader_cordon_dir": str(tmp_path / "gpu-01" / "cordon"),
                    "hf_loader_config_dir": str(gpu_config),
                    "hf_loader_report_file": str(report),
                    "hf_loader_group": "root",
                }
            }
        },
        "slurm_nodes": {
            "hosts": {"node-01": {**local, "slurm_node_job_script_dir": str(tmp_path / "jobs")}, "node-02": local},
            "vars": {"slurm_node_job_gres": "", "slurm_node_job_signal_seconds": 30},
        },
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def train(tmp_path: Path, *args: str) -> tuple[int, str]:
    bin_dir = fake_bin(tmp_path, {"sbatch": SBATCH, "squeue": SQUEUE})
    env = {
        "ANSIBLE_GATHERING": "explicit",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_SLURM_LOG": str(tmp_path),
    }
    return run_playbook(write_inventory(tmp_path), "train.yml", *args, env=env)


def test_a_bad_launcher_is_refused_before_any_host_changes(tmp_path):
    rc, out = train(tmp_path, "-e", "train_launcher=slrum")
    assert rc != 0
    assert "train_launcher must be systemd or slurm (got 'slrum')" in out, out[-3000:]
    written = sorted(p.name for p in (tmp_path / "gpu-01" / "etc-hf-loader").iterdir())
    assert written == ["train-default.yaml"], "train.yml changed a host before refusing the launcher"
    assert not (tmp_path / "sbatch").exists() and not (tmp_path / "jobs").exists()


def test_the_systemd_launcher_is_the_default_and_submits_nothing(tmp_path):
    _, out = train(tmp_path)
    written = sorted(p.name for p in (tmp_path / "gpu-01" / "etc-hf-loader").iterdir())
    assert "launch-default.env" in written, out[-3000:]  # the training unit's path, as before
    assert not (tmp_path / "sbatch").exists() and not (tmp_path / "squeue").exists()
    assert "Submit the job through Slurm" not in out


def test_the_slurm_launcher_submits_one_job_once(tmp_path):
    rc, out = train(tmp_path, "-e", "train_launcher=slurm")
    assert rc == 0, out[-3000:]
    # tasks_from: job, not job.yml: Ansible checks the entry point's spec only by its bare name.
    assert "Validating arguments against arg spec 'job'" in out
    script = tmp_path / "jobs" / "hf-train-default.sbatch"
    assert (tmp_path / "sbatch").read_text() == f"--parsable {script}\n"
    assert "Submitted job 4242 (hf-train-default, 2 nodes)" in " ".join(out.split())
    assert "--user trainer --name hf-train-default" in (tmp_path / "squeue").read_text()
    text = script.read_text()
    for option in ("--nodes=2", "--requeue", "--signal=B:TERM@30", "--open-mode=append"):
        assert f"#SBATCH {option}\n" in text
    assert "--gres" not in text
    assert written_hosts(tmp_path) == ["train-default.yaml"]  # the systemd path did not run

    # Queued already: not submitted again, and the script unchanged.
    (tmp_path / "queued").write_text("4242 RUNNING\n")
    rc, out = train(tmp_path, "-e", "train_launcher=slurm")
    assert rc == 0 and (tmp_path / "sbatch").read_text().count("\n") == 1, out[-3000:]
    assert "changed=0" in out and "Not submitted: job 4242 RUNNING" in " ".join(out.split())


def test_check_mode_submits_nothing(tmp_path):
    rc, out = train(tmp_path, "-e", "train_launcher=slurm", "--check", "--diff")
    assert rc == 0, out[-3000:]
    assert "Would submit a job (check mode)" in " ".join(out.split()) and not (tmp_path / "sbatch").exists()
    assert not (tmp_path / "jobs").exists() and "#SBATCH --requeue" in out  # the script shown, not written


def written_hosts(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "gpu-01" / "etc-hf-loader").iterdir())


def test_bad_job_settings_stop_before_the_script_is_written(tmp_path):
    rc, out = train(tmp_path, "-e", "train_launcher=slurm", "-e", "slurm_node_job_time_limit=1")
    assert rc != 0
    assert "slurm_node_job_time_limit '1' (60 s) leaves no time to train" in " ".join(out.split()), out[-3000:]
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "sbatch").exists()


# The batch script itself, run by bash over stand-ins: what each node's launcher gets, and a SIGTERM.
SCONTROL = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_SLURM_LOG/scontrol"
case "$1 $2" in
  "show hostnames") printf 'node-07\\nnode-08\\n' ;;
  "show node") echo "NodeName=$3 Arch=x86_64 CoresPerSocket=1 NodeAddr=10.0.0.7 NodeHostName=$3 Version=22.05.8" ;;
esac
"""
# srun: runs its command once per node of the allocation (SLURM_NODEID 0, 1), as slurmstepd would;
# its own SIGTERM kills them (SIGKILL), as Slurm's srun does.
SRUN = """#!/bin/bash
printf '%s\\n' "$*" >> "$FAKE_SLURM_LOG/srun"
cmd=("${@: -3}")
pids=()
for id in 0 1; do SLURM_NODEID=$id "${cmd[@]}" & pids+=($!); done
printf '%s\\n' "${pids[@]}" > "$FAKE_SLURM_LOG/tasks"
trap 'kill -KILL "${pids[@]}"' TERM
for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do wait "$p"; done; done
"""
# scancel --signal=TERM JOB: SIGTERM to the tasks of the job's steps (through slurmd, not srun).
SCANCEL = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_SLURM_LOG/scancel"
kill -TERM $(cat "$FAKE_SLURM_LOG/tasks")
"""
# The loader's Python: records its arguments and environment; with FAKE_TRAIN_SECONDS it trains
# until then or a SIGTERM, and says which.
PYTHON = """#!/bin/bash
echo "node $SLURM_NODEID: $* HF_HUB_OFFLINE=$HF_HUB_OFFLINE" >> "$FAKE_SLURM_LOG/launch"
trap 'echo "node $SLURM_NODEID: SIGTERM, checkpoint" >> "$FAKE_SLURM_LOG/launch"; exit 0' TERM
for _ in $(seq "${FAKE_TRAIN_SECONDS:-0}"); do sleep 0.2; done
"""


def batch_script(tmp_path: Path) -> Path:
    rc, out = train(tmp_path, "-e", "train_launcher=slurm")
    assert rc == 0, out[-3000:]
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    (tmp_path / "hf.env").write_text("HF_HUB_OFFLINE=1\n")
    text = (tmp_path / "jobs" / "hf-train-default.sbatch").read_text()
    text = text.replace("/opt/hf-loader/venv", str(venv)).replace("/etc/hf-cache/hf.env", str(tmp_path / "hf.env"))
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    fake_bin(tmp_path, {"scontrol": SCONTROL, "srun": SRUN, "scancel": SCANCEL})
    return script


def job_env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "FAKE_SLURM_LOG": str(tmp_path),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node-[07-08]",
        "SLURM_NNODES": "2",
        **more,
    }


def test_every_node_gets_its_rank_and_the_first_nodes_address(tmp_path):
    script = batch_script(tmp_path)
    done = subprocess.run(["bash", str(script)], env=job_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "world 2, master 10.0.0.7:7501" in done.stdout
    assert "show hostnames node-[07-08]" in (tmp_path / "scontrol").read_text()
    lines = sorted((tmp_path / "launch").read_text().splitlines())
    config = "/etc/hf-loader/train-default.yaml"
    for rank, line in enumerate(lines):
        assert line == (
            f"node {rank}: -m hf_loader.launch --stop-timeout 27 -n 1 --world_size 2 --node_rank {rank} "
            f"--master_addr 10.0.0.7 --master_port 7501 -m hf_loader.train --config-file {config} HF_HUB_OFFLINE=1"
        )
    assert "requeue" not in (tmp_path / "scontrol").read_text()  # training that ends is not requeued


def test_a_sigterm_checkpoints_every_node_then_requeues_the_job(tmp_path):
    script = batch_script(tmp_path)
    job = subprocess.Popen(
        ["bash", str(script)], env=job_env(tmp_path, FAKE_TRAIN_SECONDS="100"), stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    while not ((tmp_path / "launch").exists() and (tmp_path / "launch").read_text().count("\n") == 2):
        assert time.monotonic() < deadline, "the nodes never started"
        time.sleep(0.1)
    job.send_signal(signal.SIGTERM)  # what --signal=B:TERM@S delivers: the batch shell only
    out, _ = job.communicate(timeout=30)
    launch = (tmp_path / "launch").read_text()
    assert "node 0: SIGTERM, checkpoint" in launch and "node 1: SIGTERM, checkpoint" in launch
    assert (tmp_path / "scancel").read_text() == "--signal=TERM 4242\n"
    assert "requeue 4242\n" in (tmp_path / "scontrol").read_text(), out
    assert "after SIGTERM: requeueing job 4242" in out
