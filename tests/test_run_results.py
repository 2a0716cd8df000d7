"""Results that outlive the controller: each runbook's summary as set_stats and as an artifact file.

The runbooks run for real on this machine as conftest.run_playbook runs them (the project's
ansible.cfg, local-connection hosts, facts beside the inventory), with the ansible.posix.json
callback and show_custom_stats, which prints the run's global stats as AWX takes them (runner's
playbook_on_stats event carries stats.custom['_run'] as artifact_data). Each test reads the
stats and the file fleet_artifact wrote, and checks that both say the same.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import yaml

import fleet_report
from conftest import ansible_playbook
from test_fleet_report import READY_REPORT, summary
from test_train_save_folder import RESUMING, write_fleet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.gpu_fleet.common.plugins.module_utils.run_results import state_counts  # noqa: E402


def run(inventory: Path, name: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    """playbooks/<name> as conftest's ansible_playbook runs it, with the role's own artifact folder
    (no runner's unless `env` names one) and its output as JSON: (rc, output, stderr)."""
    json_output = {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_SHOW_CUSTOM_STATS": "true"}
    # The role reads the variable with lookup('env'): empty is the same as unset.
    done = ansible_playbook(
        inventory, name, *args, env={"AWX_ISOLATED_DATA_DIR": "", **json_output, **(env or {})}, timeout=300
    )
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def stats(output: dict) -> dict:
    """The run's global stats: what AWX shows as the job's artifacts."""
    return output["global_custom_stats"]


def changed(output: dict, task: str) -> bool:
    """Whether the named task changed anything on any host, in any play. A role's task is named
    "role : task" in the output; a task that did not run at all fails the test, so that a
    misnamed task cannot pass for one that changed nothing."""
    entries = [
        entry
        for play in output["plays"]
        for entry in play["tasks"]
        if entry["task"]["name"] == task or entry["task"]["name"].endswith(f" : {task}")
    ]
    assert entries, f"no task {task!r} in the run"
    return any(result.get("changed", False) for entry in entries for result in entry["hosts"].values())


def local_hosts(tmp_path: Path, hosts: dict[str, dict]) -> Path:
    """Hosts of this machine (local connection, no become), each with its own variables."""
    inventory = tmp_path / "inventory.yml"
    entries = {
        name: {
            "ansible_connection": "local",
            "ansible_become": False,
            "ansible_python_interpreter": sys.executable,
            **more,
        }
        for name, more in hosts.items()
    }
    inventory.write_text(yaml.safe_dump({"gpu_hosts": {"hosts": entries}}))
    return inventory


@pytest.fixture
def fleet(tmp_path: Path) -> dict:
    """Two hosts whose cache tests the controller stored: gpu-01 ready, gpu-02 not ready."""
    reports = tmp_path / "reports"
    (reports / "hosts").mkdir(parents=True)
    for item in (summary("gpu-01", READY_REPORT), summary("gpu-02", None, problem="no report stored")):
        (reports / "hosts" / f"{item['host']}.json").write_text(json.dumps(item))
    inventory = local_hosts(tmp_path, {"gpu-01": {}, "gpu-02": {}})
    return {"inventory": inventory, "reports": reports, "artifacts": tmp_path / "artifacts"}


def test_the_fleet_report_goes_out_as_stats_and_beside_the_report_and_a_rerun_changes_neither(fleet):
    # Without ansible-runner the file goes beside the fleet report, where an operator looks.
    # That folder is another role's, with its own mode (pull mode's reports folder is 0700): the
    # pull lab's drift run showed both roles setting it on every run.
    fleet["reports"].chmod(0o700)
    args = ("-e", f"fleet_report_dir={fleet['reports']}")
    rc, output, stderr = run(fleet["inventory"], "report.yml", *args)
    assert rc == 0, stderr
    assert fleet["reports"].stat().st_mode & 0o777 == 0o700
    assert not changed(output, "Create the artifact folder")
    sent = stats(output)["gpu_fleet_report"]
    assert sent == {
        "summary": "fleet: 1 of 2 hosts ready to train; not ready: gpu-02",
        "ready": 1,
        "hosts_in_run": 2,
        "counts": {"ready": 1, "not-ready": 1},
        "hosts": {"gpu-01": "ready", "gpu-02": "not-ready"},
        # Which run, for merging slices (tests/test_fleet_slices.py): no AWX id, no target set.
        "run": {
            "format": fleet_report.FORMAT,
            "schema": fleet_report.schema_digest(),
            "id": "",
            "target": {"nvidia_driver_branch": "", "nvidia_driver_version": "", "hf_loader_dataset": ""},
        },
        "report": f"{fleet['reports']}/fleet.html",
        "check_mode": False,
    }
    assert json.loads((fleet["reports"] / "gpu_fleet_report.json").read_text()) == sent
    # Only the global stats: nothing per host (AWX would not show it).
    assert not output["custom_stats"]

    rc, output, stderr = run(fleet["inventory"], "report.yml", *args)
    assert rc == 0, stderr
    assert stats(output)["gpu_fleet_report"] == sent
    assert not changed(output, "Write the summary"), "a rerun that saw the same fleet rewrote its summary"


def test_under_ansible_runner_the_file_goes_to_the_runs_artifact_folder_and_check_mode_writes_none(fleet):
    # ansible-runner (and so navigator and AWX) names the run's artifacts/<ident> in AWX_ISOLATED_DATA_DIR.
    runner_artifacts = fleet["artifacts"] / "artifacts" / "ident-1"
    runner_artifacts.mkdir(parents=True)
    args = ("-e", f"fleet_report_dir={fleet['reports']}")
    env = {"AWX_ISOLATED_DATA_DIR": str(runner_artifacts)}
    rc, output, stderr = run(fleet["inventory"], "report.yml", "--check", *args, env=env)
    assert rc == 0, stderr
    assert stats(output)["gpu_fleet_report"]["check_mode"] is True
    assert not list(runner_artifacts.iterdir()), "check mode wrote the artifact file"

    runner_artifacts.rmdir()  # a folder that is missing is made
    rc, output, stderr = run(fleet["inventory"], "report.yml", *args, env=env)
    assert rc == 0, stderr
    assert changed(output, "Create the artifact folder")
    sent = stats(output)["gpu_fleet_report"]
    assert sent["check_mode"] is False
    assert json.loads((runner_artifacts / "gpu_fleet_report.json").read_text()) == sent
    assert not (fleet["reports"] / "gpu_fleet_report.json").exists()


def test_an_empty_artifact_folder_writes_no_file_and_still_sends_the_stats(fleet):
    rc, output, stderr = run(
        fleet["inventory"], "report.yml", "-e", f"fleet_report_dir={fleet['reports']}", "-e", "fleet_artifact_dir="
    )
    assert rc == 0, stderr
    assert stats(output)["gpu_fleet_report"]["hosts"] == {"gpu-01": "ready", "gpu-02": "not-ready"}
    assert not (fleet["reports"] / "gpu_fleet_report.json").exists()


def test_a_relative_artifact_folder_is_refused_naming_the_variable(fleet):
    rc, output, _ = run(
        fleet["inventory"], "report.yml", "-e", f"fleet_report_dir={fleet['reports']}", "-e", "fleet_artifact_dir=out"
    )
    assert rc != 0
    message = json.dumps(output)
    assert "Bad path(s): fleet_artifact_dir" in message, message[-2000:]
    assert "gpu_fleet_report" not in stats(output)


def test_pull_collect_sends_each_hosts_last_pull_run_and_the_fleet_report(tmp_path):
    # gpu-01's last pull run finished ready; gpu-02 has not finished one (no ready.json).
    home = tmp_path / "gpu-01-home"
    (home / "reports" / "hosts").mkdir(parents=True)
    (home / "ready.json").write_text(json.dumps({"ready": True, "running": False, "host": "pulled-01"}))
    stored = summary("pulled-01", READY_REPORT)
    (home / "reports" / "hosts" / "pulled-01.json").write_text(json.dumps(stored))
    inventory = local_hosts(
        tmp_path, {"gpu-01": {"fleet_pull_home": str(home)}, "gpu-02": {"fleet_pull_home": str(tmp_path / "none")}}
    )
    artifacts = tmp_path / "artifacts"
    rc, output, stderr = run(
        inventory,
        "pull-collect.yml",
        "-e",
        f"fleet_report_dir={tmp_path / 'reports'}",
        "-e",
        f"fleet_artifact_dir={artifacts}",
    )
    assert rc == 0, stderr
    sent = stats(output)
    assert sent["gpu_fleet_pull_collect"] == {
        "counts": {"no-run": 1, "ready": 1},
        "hosts": {"gpu-01": "ready", "gpu-02": "no-run"},
        "report": f"{tmp_path / 'reports'}/fleet.html",
        "check_mode": False,
    }
    assert sent["gpu_fleet_report"]["hosts"] == {"gpu-01": "ready", "gpu-02": "not-ready"}
    for name in ("gpu_fleet_pull_collect", "gpu_fleet_report"):
        assert json.loads((artifacts / f"{name}.json").read_text()) == sent[name]


def _closed_port() -> int:
    """A local TCP port nothing listens on: ssh to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_driver_rollout_that_reached_no_host_still_sends_its_summary(tmp_path):
    port = _closed_port()
    inventory = tmp_path / "inventory.yml"
    unreachable = {"ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "nobody"}
    hosts = {name: unreachable for name in ("gpu-01", "gpu-02")}
    inventory.write_text(yaml.safe_dump({"gpu_hosts": {"hosts": hosts}}))
    artifacts = tmp_path / "artifacts"
    rc, output, _ = run(
        inventory,
        "upgrade-driver.yml",
        "-e",
        "upgrade_driver_version=580.95.05",
        "-e",
        "upgrade_driver_pause_after_canary=false",
        "-e",
        f"upgrade_driver_report_dir={tmp_path / 'reports'}",
        "-e",
        f"fleet_artifact_dir={artifacts}",
        env={"ANSIBLE_HOST_KEY_CHECKING": "false"},
    )
    assert rc != 0  # the rollout fails: no host was upgraded
    sent = stats(output)["gpu_fleet_upgrade_driver"]
    assert sent["ok"] is False
    assert sent["hosts"] == {"gpu-01": "unreachable", "gpu-02": "unreachable"}
    assert sent["counts"] == {"unreachable": 2}
    assert sent["target"]["version"] == "580.95.05"
    assert sent["report"] == f"{tmp_path / 'reports'}/upgrade-driver.md"
    assert json.loads((artifacts / "gpu_fleet_upgrade_driver.json").read_text()) == sent


def test_state_counts_counts_hosts_per_state_in_a_stable_order():
    assert state_counts({"b": "ready", "a": "failed", "c": "ready"}) == {"failed": 1, "ready": 2}
    assert list(state_counts({"x": "z", "y": "a"})) == ["a", "z"]
    assert state_counts({}) == {}


def test_train_sends_which_hosts_started_and_which_were_refused(tmp_path):
    # A stand-in systemctl on PATH: the training unit "starts" on this machine without systemd.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do case "$arg" in show) show=1;; -*) ;; *) unit=$arg;; esac; done\n'
        '[ -n "$show" ] && printf \'Id=%s\\nLoadState=loaded\\nActiveState=inactive\\nSubState=dead\\n\' "$unit"\n'
        "exit 0\n"
    )
    (fake / "systemctl").chmod(0o755)
    once = {**RESUMING, "autoresume": False}
    inventory = write_fleet(tmp_path, {name: ("arrow", once, {}) for name in ("gpu-01", "gpu-02", "gpu-03")})
    # gpu-03's last cache test failed: train.yml refuses it.
    (tmp_path / "gpu-03" / "cache-test.json").write_text(json.dumps({"ready": False, "message": "not cached"}))
    artifacts = tmp_path / "artifacts"
    rc, output, stderr = run(
        inventory,
        "train.yml",
        "-e",
        f"fleet_artifact_dir={artifacts}",
        env={"ANSIBLE_GATHERING": "explicit", "PATH": f"{fake}:{os.environ['PATH']}"},
    )
    assert rc != 0, "the refused host fails the run"
    sent = stats(output)["gpu_fleet_train"]
    assert sent == {
        "job": "default",
        "counts": {"not-started": 1, "started": 2},
        "hosts": {"gpu-01": "started", "gpu-02": "started", "gpu-03": "not-started"},
        "check_mode": False,
    }, stderr
    assert json.loads((artifacts / "gpu_fleet_train.json").read_text()) == sent
