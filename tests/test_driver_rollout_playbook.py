"""playbooks/upgrade-driver.yml run for real by ansible-playbook, at the points no host is needed.

Attacks: a drain timeout shorter than the training unit's stop timeout (the rollout would
fail a host whose job is still checkpointing), a fleet that does not answer (Ansible ends the
run when every host of a play is unreachable, the report's play included), and a job started
between the batch's fresh read and its cordon (the order of the batch's steps).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def _closed_port() -> int:
    """A local TCP port nothing listens on: ssh to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inventory(tmp_path: Path, hosts: dict) -> Path:
    inventory = tmp_path / "inventory.yml"
    port = _closed_port()
    entries = {
        name: {"ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "nobody", **more}
        for name, more in hosts.items()
    }
    inventory.write_text(yaml.safe_dump({"gpu_hosts": {"hosts": entries}}))
    return inventory


def _rollout(tmp_path: Path, inventory: Path, *extra: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "false",
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
    }
    done = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            str(inventory),
            str(ROOT / "playbooks" / "upgrade-driver.yml"),
            "-e",
            "upgrade_driver_version=580.95.05",
            "-e",
            "upgrade_driver_pause_after_canary=false",
            "-e",
            f"upgrade_driver_report_dir={tmp_path / 'reports'}",
            "-e",
            f"fleet_artifact_dir={tmp_path / 'artifacts'}",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _task_names(play: str) -> list[str]:
    """The task names --list-tasks gives for a play, without the role's "upgrade_driver : " prefix."""
    names = [line.split("\t")[0].strip() for line in play.splitlines() if "TAGS:" in line]
    return [name.split(" : ", 1)[-1] for name in names]


def test_a_drain_shorter_than_a_hosts_stop_timeout_is_refused_before_any_host(tmp_path):
    inventory = _inventory(tmp_path, {"gpu-01": {"hf_loader_train_stop_timeout": 900}, "gpu-02": {}})
    rc, out = _rollout(tmp_path, inventory)
    flat = _flat(out)
    assert rc != 0
    assert "upgrade_driver_drain_timeout 630 s is shorter than" in flat, out[-3000:]
    assert "hf_loader_train_stop_timeout 900 s" in flat and "upgrade_driver_drain_margin 30 s" in flat
    assert "Set -e upgrade_driver_drain_timeout=930 or more" in flat
    assert "gpu-01" not in out.split("PLAY RECAP")[-1], "a host was contacted before the refusal"
    assert not (tmp_path / "reports").exists()


def test_a_drain_shorter_than_the_roles_default_stop_timeout_is_refused(tmp_path):
    # No stop timeout in the inventory: the unit gets hf_loader's default (600 s).
    inventory = _inventory(tmp_path, {"gpu-01": {}})
    rc, out = _rollout(tmp_path, inventory, "-e", "upgrade_driver_drain_timeout=600")
    flat = _flat(out)
    assert rc != 0 and "upgrade_driver_drain_timeout 600 s is shorter than" in flat, out[-3000:]
    assert "hf_loader_train_stop_timeout 600 s" in flat and "upgrade_driver_drain_timeout=630" in flat


def test_a_fleet_that_does_not_answer_still_gets_its_report(tmp_path):
    inventory = _inventory(tmp_path, {"gpu-01": {}, "gpu-02": {}})
    rc, out = _rollout(tmp_path, inventory)
    report = tmp_path / "reports" / "upgrade-driver.json"
    assert report.exists(), f"no report written:\n{out[-3000:]}"
    doc = json.loads(report.read_text())
    assert {row["host"]: row["state"] for row in doc["rows"]} == {"gpu-01": "unreachable", "gpu-02": "unreachable"}
    assert not doc["ok"] and rc != 0
    assert "The rollout ended with hosts that failed. 2 unreachable." in _flat(out)


def test_the_batch_cordons_a_host_before_reading_it_again(tmp_path):
    # A job started between the fresh read and the cordon would be neither drained nor
    # refused: in each batch play the cordon must come before the read of the training units,
    # and what is not upgraded has the cordon lifted again before the drain.
    inventory = _inventory(tmp_path, {"gpu-01": {}})
    rc, out = _rollout(tmp_path, inventory, "--list-tasks")
    assert rc == 0, out[-3000:]
    plays = re.split(r"\n\s*play #\d+ ", out)
    batches = [play for play in plays if "Drain the training units" in play]
    assert len(batches) == 2, out  # the canary and the rest
    for play in batches:
        tasks = _task_names(play)
        cordon = next(i for i, task in enumerate(tasks) if task.startswith("Cordon the host"))
        read = tasks.index("Read the loaded driver, the active training units and the units left stopped")
        decide = tasks.index("Decide, job by job, what the batch drains, waits for or skips")
        lift = tasks.index("Lift the cordon just set from a host the rollout does not take out of training")
        drain = tasks.index("Drain the training units (SIGTERM)")
        restart = tasks.index("Decide which jobs start again")
        assert cordon < read < decide < lift < drain < restart, tasks
        # On a Slurm node: held through Slurm before the cordon (a job Slurm sent it after the
        # cordon would be refused by the Prolog), its Slurm jobs handled once the batch decided,
        # before the install; released only after the rollout's cordon is lifted (before it, the
        # release would hand the node to the health check for the rollout's own cordon).
        hold = tasks.index("Hold the Slurm node before it is cordoned")
        slurm_jobs = tasks.index("Requeue, wait for or skip the Slurm jobs on the node")
        install = tasks.index("Install the driver, reboot where needed, verify")
        uncordon = tasks.index("Lift the rollout's cordon")
        release = tasks.index("Release the rollout's hold on the Slurm node")
        assert hold < cordon and decide < slurm_jobs < install < uncordon < release, tasks
        # A job starts again on all its hosts at once: after every host of the batch has its outcome.
        assert tasks.index("Start the job units again") > restart > tasks.index("Record the host's outcome")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["-e", "upgrade_driver_busy=skip"],
            "upgrade_driver_busy is now upgrade_driver_jobs (drain, wait or skip): rename it.",
        ),
        (["-e", "upgrade_driver_jobs=kill"], 'upgrade_driver_jobs must be drain, wait or skip; got "kill".'),
        # It names the cordon file and the Slurm hold's record beside the health check's.
        (
            ["-e", "upgrade_driver_cordon_owner=../drain-reason"],
            "upgrade_driver_cordon_owner must be a short lower-case name",
        ),
        (["-e", "upgrade_driver_slurm_health=gpu-fleet-slurm-health"], "the absolute path of the health check program"),
        (
            ["-e", "upgrade_driver_max_unavailable=lots"],
            "upgrade_driver_max_unavailable must be a host count or a percentage",
        ),
        (
            ["-e", "upgrade_driver_wait_timeout=soon"],
            'upgrade_driver_wait_timeout must be a number of seconds; got "soon".',
        ),
        (
            ["-e", "upgrade_driver_canary=canaries"],
            'upgrade_driver_canary must be idle, first, "" or a group holding hosts',
        ),
        (
            ["-e", "upgrade_driver_phase=rollout"],
            "upgrade_driver_phase must be all (the whole rollout), canary (the canary batch only) or rest",
        ),
        (
            ["-e", "upgrade_driver_phase=canary", "-e", "upgrade_driver_canary="],
            "upgrade_driver_phase=canary needs a canary, but upgrade_driver_canary is empty",
        ),
    ],
)
def test_bad_job_and_budget_settings_are_refused_before_any_host(tmp_path, extra, message):
    inventory = _inventory(tmp_path, {"gpu-01": {}, "gpu-02": {}})
    rc, out = _rollout(tmp_path, inventory, *extra)
    assert rc != 0 and message in _flat(out), out[-3000:]
    assert "gpu-01" not in out.split("PLAY RECAP")[-1], "a host was contacted before the refusal"
    assert not (tmp_path / "reports").exists()


def test_the_drivers_plan_is_checked_on_every_host_before_the_first_drain(tmp_path):
    # A wrong target or a source without the branch must be found with every job still running:
    # the role's checks run in the play that reads every host, before the canary's play.
    inventory = _inventory(tmp_path, {"gpu-01": {}, "gpu-02": {}})
    rc, out = _rollout(tmp_path, inventory, "--list-tasks")
    assert rc == 0, out[-3000:]
    plays = re.split(r"\n\s*play #\d+ ", out)
    reading = next(play for play in plays if "Read every host's driver and training" in play)
    assert "Run the nvidia_driver role's checks and plan in check mode" in reading
    assert "Drain the training units" not in reading
    planning = next(play for play in plays if "Plan the canary and the batches" in play)
    tasks = _task_names(planning)
    assert tasks.index("Stop before the first drain when the check failed on a host") < tasks.index("Show the batches")
    check = (ROOT / "roles" / "nvidia_driver" / "tasks" / "check.yml").read_text()
    # Only reads: the role's own checks and plan, never a step that changes the host.
    steps = re.findall(r"(?:import|include)_tasks:\s+(?:file: )?(\S+)", check)
    assert steps == ["facts.yml", "preflight.yml", "observe.yml", "detect.yml", "plan.yml"]


@pytest.mark.parametrize("awx_var", ["awx_job_id", "tower_job_id"])
def test_under_awx_the_pause_is_refused_before_any_host(tmp_path, awx_var):
    # AWX gives every job awx_job_id (tower_job_id in older releases); there is no terminal, so the
    # pause would not wait and the canary gate would silently disappear.
    inventory = _inventory(tmp_path, {"gpu-01": {}, "gpu-02": {}})
    rc, out = _rollout(tmp_path, inventory, "-e", "upgrade_driver_pause_after_canary=true", "-e", f"{awx_var}=42")
    flat = _flat(out)
    assert rc != 0 and "This run is an AWX job (42)" in flat, out[-3000:]
    assert "two job templates with an approval between them" in flat
    assert "set upgrade_driver_pause_after_canary=false to roll on without a gate" in flat
    assert "gpu-01" not in out.split("PLAY RECAP")[-1], "a host was contacted before the refusal"
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    "extra", [["-e", "upgrade_driver_phase=canary"], ["-e", "upgrade_driver_pause_after_canary=false"]]
)
def test_under_awx_the_canary_phase_and_a_rollout_without_pause_pass_the_check(tmp_path, extra):
    inventory = _inventory(tmp_path, {"gpu-01": {}})
    rc, out = _rollout(
        tmp_path, inventory, "-e", "upgrade_driver_pause_after_canary=true", "-e", "awx_job_id=42", *extra
    )
    assert "This run is an AWX job" not in _flat(out)
    assert "gpu-01" in out.split("PLAY RECAP")[-1], out[-3000:]  # past the checks, on to the hosts
    # The host does not answer: reported unreachable, the run fails on that, not on the checks.
    assert rc != 0 and (tmp_path / "reports" / "upgrade-driver.json").exists()


def test_the_rest_phase_without_a_canary_is_refused_before_the_first_cordon(tmp_path):
    inventory = _inventory(tmp_path, {"gpu-01": {}, "gpu-02": {}})
    rc, out = _rollout(tmp_path, inventory, "-e", "upgrade_driver_phase=rest")
    flat = _flat(out)
    assert rc != 0 and "upgrade_driver_phase=rest refused: no host shows that a canary of 580.95.05 passed" in flat
    assert "-e upgrade_driver_phase=canary with the same target first" in flat
    # No batch ran: nothing cordoned, drained or installed.
    for step in ("Cordon the host before it is read again", "Drain the training units", "Install the driver"):
        assert step not in out, step
    doc = json.loads((tmp_path / "reports" / "upgrade-driver.json").read_text())
    assert doc["stopped"].startswith("upgrade_driver_phase=rest refused") and not doc["ok"] and doc["batches"] == []
    assert doc["phase"] == "rest"


def test_only_the_canary_play_marks_its_hosts_after_its_batch(tmp_path):
    inventory = _inventory(tmp_path, {"gpu-01": {}})
    rc, out = _rollout(tmp_path, inventory, "--list-tasks")
    assert rc == 0, out[-3000:]
    plays = re.split(r"\n\s*play #\d+ ", out)
    canary = next(play for play in plays if "Upgrade the canary" in play.splitlines()[0])
    tasks = _task_names(canary)
    assert tasks.index("Write the canary's mark (the target it passed with)") > tasks.index(
        "Decide whether the rollout goes on"
    )
    rest = next(play for play in plays if "Upgrade the rest of the fleet" in play.splitlines()[0])
    assert "Write the canary's mark (the target it passed with)" not in rest
    mark = (ROOT / "roles" / "upgrade_driver" / "tasks" / "mark.yml").read_text()
    assert "upgrade_driver_phase == 'canary'" in mark and "upgrade_driver_record.passed" in mark
