"""playbooks/awx/driver-rollout-workflow.yml: the driver rollout as an AWX workflow, checked without AWX.

No AWX runs here, so the checks are: the graph (canary, then an Approval node, then rest, each
reached only on success), each job template's phase, and that the awx.awx modules accept every
argument the playbook gives them (a module validates its arguments before it calls the API: run
against a closed port, it must fail on the connection, not on an argument).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = ROOT / "playbooks" / "awx" / "driver-rollout-workflow.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def _tasks() -> dict:
    (play,) = yaml.safe_load(PLAYBOOK.read_text())
    return {task["name"]: task for task in play["tasks"]}, play["vars"]


def test_each_phase_is_a_job_template_of_the_rollout_playbook():
    tasks, play_vars = _tasks()
    template = tasks["Make a job template for each phase"]["awx.awx.job_template"]
    assert template["playbook"] == "playbooks/upgrade-driver.yml"
    assert template["extra_vars"] == {"upgrade_driver_phase": "{{ item.phase }}"}
    assert [item["phase"] for item in play_vars["driver_workflow_phases"]] == ["canary", "rest"]
    assert template["ask_variables_on_launch"] is True and template["allow_simultaneous"] is False


def test_the_rest_runs_only_after_the_canary_passed_and_a_person_approved():
    tasks, _ = _tasks()
    nodes = {
        node["identifier"]: node
        for node in tasks["Make the workflow (canary, then an approval, then the rest)"][
            "awx.awx.workflow_job_template"
        ]["workflow_nodes"]
    }
    assert set(nodes) == {"canary", "approve", "rest"}
    assert nodes["approve"]["unified_job_template"]["type"] == "workflow_approval"
    assert nodes["canary"]["unified_job_template"]["name"].endswith("(canary)")
    assert nodes["rest"]["unified_job_template"]["name"].endswith("(rest)")
    edges = {
        (name, kind, target["identifier"])
        for name, node in nodes.items()
        for kind, targets in (node.get("related") or {}).items()
        for target in targets
    }
    # Success edges only: a failed canary or a denied (or expired) approval ends the workflow.
    assert edges == {("canary", "success_nodes", "approve"), ("approve", "success_nodes", "rest")}


def test_the_awx_modules_accept_every_argument(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "CONTROLLER_HOST": f"http://127.0.0.1:{port}",
        "CONTROLLER_OAUTH_TOKEN": "not-a-token",
    }
    for task in ("Make a job template for each phase", "Make the workflow (canary, then an approval, then the rest)"):
        done = subprocess.run(
            [
                str(ANSIBLE_PLAYBOOK),
                str(PLAYBOOK),
                "--start-at-task",
                task,
                "-e",
                '{"driver_workflow_credentials": ["c"]}',
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=False,
            timeout=120,
        )
        out = re.sub(r"\s+", " ", done.stdout + done.stderr)
        assert done.returncode != 0
        assert f"TASK [{task}]" in out
        assert f"error when trying to connect to http://127.0.0.1:{port}/api/" in out, out[-2000:]
        for refusal in ("Unsupported parameters", "is of type", "must be one of", "missing required"):
            assert refusal not in out, out[-2000:]
