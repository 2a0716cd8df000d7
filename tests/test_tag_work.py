"""The every-tag check of the Molecule verifies (molecule/shared/verify_helpers.py): what a run
with one tag did of the role's own, read from the task_record callback of a real
ansible-playbook run on this machine (local connection, a role of debug tasks only).

The attack: a tag that only the preflight carries (wired to nothing of its own) used to pass,
because every tag runs the preflight. It must now show no work of its own and fail the check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / "molecule" / "shared"
sys.path.insert(0, str(SHARED))

import verify_helpers  # noqa: E402  from molecule/shared, as the verifier's PYTHONPATH has it

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

MAIN = """
- name: Check before anything
  ansible.builtin.import_tasks: preflight.yml
  tags: &every_tag [demo, demo_preflight, demo_step, demo_unwired]

# What the checks allowed (a role's include_vars after its preflight): every tag runs it too.
- name: Load the values the preflight allowed
  ansible.builtin.set_fact:
    demo_loaded: true
  tags: *every_tag

- name: The step, where there is work
  ansible.builtin.include_tasks:
    file: step.yml
    apply:
      tags: [demo, demo_step]
  when: demo_work | bool
  tags: [demo, demo_step]
"""
PREFLIGHT = """
- name: Check the input
  ansible.builtin.debug:
    msg: checked
"""
STEP = """
- name: Do the step
  ansible.builtin.debug:
    msg: done
"""
PLAYBOOK = """
- name: Demo
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Apply demo
      ansible.builtin.include_role:
        name: demo
      tags: [always]
"""


@pytest.fixture
def project(tmp_path):
    tasks = tmp_path / "roles" / "demo" / "tasks"
    tasks.mkdir(parents=True)
    for name, text in {"main.yml": MAIN, "preflight.yml": PREFLIGHT, "step.yml": STEP}.items():
        (tasks / name).write_text(text)
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    return tmp_path


def run_tag(project: Path, tag: str, work: bool) -> tuple[list[str], list[str]]:
    """ansible-playbook --tags TAG with the task_record callback, as run_recording_tasks runs it."""

    def run(_host, *args: str, env: dict[str, str]) -> tuple[int, str]:
        argv = [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", "site.yml", *args]
        environment = {"PATH": f"{ANSIBLE_PLAYBOOK.parent}:/usr/bin:/bin", "ANSIBLE_ROLES_PATH": "roles", **env}
        done = subprocess.run(argv, cwd=project, env=environment, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr

    rc, output, results = verify_helpers.run_recording_tasks(
        run, None, "--check", "--tags", tag, "-e", f"demo_work={work}"
    )
    assert rc == 0, output
    assert results, output
    return verify_helpers.tag_work(results, "demo", tag, "localhost", roles=project / "roles")


def test_the_shared_files_are_those_imported_with_every_tag(project):
    assert verify_helpers.shared_task_files("demo", roles=project / "roles") == {"preflight.yml"}


def test_main_yml_tasks_with_every_tag_are_shared_by_their_line(project):
    # Line 7 of MAIN (after its leading newline): the set_fact every tag runs.
    assert verify_helpers.shared_main_lines("demo", roles=project / "roles") == {7}


def test_a_tag_with_work_shows_its_own_task(project):
    ran, decided = run_tag(project, "demo_step", work=True)
    assert [line.split(" ", 1)[1] for line in ran] == ["demo : Do the step"]
    assert ran[0].startswith("step.yml:")
    assert decided == []


def test_a_tag_with_nothing_to_do_shows_only_its_decision(project):
    ran, decided = run_tag(project, "demo_step", work=False)
    assert ran == []
    assert len(decided) == 1 and decided[0].startswith("main.yml:") and "The step, where there is work" in decided[0]


def test_a_tag_wired_to_nothing_but_the_preflight_shows_no_work(project):
    """The vacuous case: the preflight and main.yml's every-tag task ran (every tag runs them), and nothing else."""
    ran, decided = run_tag(project, "demo_unwired", work=True)
    assert ran == [] and decided == []


def test_the_tag_named_after_the_shared_step_has_it_as_its_own_work(project):
    ran, _ = run_tag(project, "demo_preflight", work=False)
    assert [line.split(" ", 1)[1] for line in ran] == ["demo : Check the input"]


def test_a_declaration_naming_a_tag_the_role_lacks_is_refused():
    with pytest.raises(ValueError, match="nvidia_driver_servcies"):
        verify_helpers.every_tag_check_mode_test(
            "nvidia_driver", None, None, nothing_to_do={"nvidia_driver_servcies": "typo"}
        )
