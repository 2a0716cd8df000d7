"""docs/first-hour.md and scripts/first_hour.py (make first-hour) in step, within make pytest.

The page run for real, in a fresh controller container against lab hosts, is `make first-hour`
(about 15 minutes). Here: the steps the script finds on the page, the edit marker, that every
make target, file and report the commands name exists or is made by an earlier step, and that
the substituted inventory and the generated shell script are well formed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import yaml

import first_hour

ROOT = Path(__file__).resolve().parent.parent
# The page's commands as an operator types them, in order. A change to the page's commands
# changes this list, and the measured run (make first-hour) should then be run again.
EXPECTED = [
    "sudo apt-get update",
    "sudo apt-get install -y --no-install-recommends python3-venv make git rsync openssh-client",
    "make venv",
    "source .venvs/controller/bin/activate",
    "ansible-playbook --version",
    "sudo mkdir -p /var/cache/gpu-fleet",
    'sudo chown "$(id -u):$(id -g)" /var/cache/gpu-fleet',
    "WHEELHOUSE_PYTHONS=3.11 make wheelhouse",
    "cp -r inventory/example inventory/mine",
    "EDIT inventory/mine",
    "ansible -i inventory/mine gpu_hosts -m ansible.builtin.ping",
    "ANSIBLE_SHOW_CUSTOM_STATS=true ansible-playbook -i inventory/mine site.yml",
    "cat reports/fleet.md",
    "cat reports/gpu_fleet_report.json",
    "ansible-playbook -i inventory/mine playbooks/train.yml",
    "cat reports/gpu_fleet_train.json",
    "ansible -i inventory/mine gpu_hosts -b -m ansible.builtin.command"
    " -a 'journalctl -u hf-train@default --no-pager -o cat -n 5'",
]
# Files the runs write, and what writes them.
MADE_BY_RUNS = {
    "reports/fleet.md": "scripts/fleet_report.py",
    "reports/gpu_fleet_report.json": "playbooks/report.yml",
    "reports/gpu_fleet_train.json": "playbooks/train.yml",
}


def steps() -> list[first_hour.Step]:
    return first_hour.extract(first_hour.DOC.read_text())


def as_text(step: first_hour.Step) -> str:
    return f"EDIT {step.text}" if step.kind == "edit" else step.text


def make_targets() -> set[str]:
    text = "\n".join(p.read_text() for p in [ROOT / "Makefile", *sorted((ROOT / "mk").glob("*.mk"))])
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, re.M))


def test_the_script_finds_the_pages_steps_in_order():
    assert [as_text(s) for s in steps()] == EXPECTED


def test_extraction_runs_only_console_commands():
    text = "\n".join(
        [
            "```sh",
            "$ never run",
            "```",
            "<!-- first-hour: edit x/y -->",
            "```console",
            "$ echo one \\",
            "  two",
            "output, not run",
            "$ echo three",
            "```",
        ]
    )
    got = first_hour.extract(text)
    assert [(s.kind, s.text) for s in got] == [("edit", "x/y"), ("run", "echo one \\\n  two"), ("run", "echo three")]


def test_every_make_target_and_file_the_commands_name_exists():
    targets = make_targets()
    made = {"inventory/mine"}  # the cp before the edit makes it
    for step in steps():
        if step.kind == "edit":
            assert step.text in made, f"the page edits {step.text} before a command makes it"
            continue
        words = shlex.split(step.text)
        command = [w for w in words if not re.match(r"^[A-Z_]+=", w)]  # less VAR=value before it
        if command[0] == "make":
            assert command[1] in targets, f"line {step.line}: make {command[1]} is no target"
        for word in words:
            if word.startswith(("inventory/", "playbooks/", "reports/", ".venvs/")) or word.endswith(".yml"):
                if word in MADE_BY_RUNS:
                    assert (ROOT / MADE_BY_RUNS[word]).exists()
                elif word.startswith(".venvs/controller/"):
                    assert "VENV := .venvs/controller" in (ROOT / "Makefile").read_text()
                else:
                    assert word in made or (ROOT / word).exists(), f"line {step.line}: {word} does not exist"
    assert (
        "reports/gpu_fleet_train.json" in MADE_BY_RUNS
        and "fleet_artifact_name: gpu_fleet_train" in (ROOT / "playbooks/train.yml").read_text()
    )
    assert "first-hour" in targets


def test_the_substituted_inventory_sets_only_what_the_page_says_to_edit():
    edits = first_hour.inventory_edits("inventory/mine", {"first-gpu-01": {"port": 2801, "loop": "/dev/loop7"}})
    hosts = yaml.safe_load(edits["inventory/mine/hosts.yml"])
    assert hosts["gpu_hosts"]["hosts"]["first-gpu-01"] == {
        "ansible_host": "127.0.0.1",
        "ansible_port": 2801,
        "dataset_volume_source": "/dev/loop7",
    }
    example = yaml.safe_load((ROOT / "inventory/example/group_vars/gpu_hosts.yml").read_text())
    mine = yaml.safe_load(edits["inventory/mine/group_vars/gpu_hosts.yml"])
    assert set(mine) == set(example)
    changed = {k for k in example if example[k] != mine[k]}
    assert changed == set(first_hour.GROUP_OVERRIDES)
    page = first_hour.DOC.read_text()
    for key in changed:  # the page tells the operator to set each of them
        assert f"`{key}`" in page, key


def test_the_generated_script_is_valid_bash():
    edits = {"inventory/mine": first_hour.inventory_edits("inventory/mine", {"h": {"port": 1, "loop": "/dev/x"}})}
    script = first_hour.shell_script(steps(), edits)
    done = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr


def test_the_page_is_linked_and_the_target_listed():
    assert "(docs/first-hour.md)" in (ROOT / "README.md").read_text()
    assert "(first-hour.md)" in (ROOT / "docs/operator.md").read_text()
    assert "`make first-hour`" in (ROOT / "docs/testing.md").read_text()
    assert "first-hour" not in (ROOT / "scripts/run-tests.sh").read_text()  # not in make test
