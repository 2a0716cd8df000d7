"""Training is never stopped or overrun on an answer the role could not read.

The task files are read as Ansible loads them (YAML, in order). The hosts that reach these
tasks have a GPU (the lab's simulated ones); the Molecule containers stop at detection.
"""

from pathlib import Path

import yaml

TASKS = Path(__file__).resolve().parents[1] / "roles/nvidia_driver/tasks"


def tasks(name):
    return yaml.safe_load((TASKS / name).read_text())


def index_of(task_list, words):
    return next(i for i, task in enumerate(task_list) if words in task.get("name", ""))


def test_every_read_of_the_training_units_is_refused_when_systemctl_fails():
    for name in ("plan.yml", "reboot.yml"):
        task_list = tasks(name)
        reads = [i for i, task in enumerate(task_list) if "list-units" in str(task.get("ansible.builtin.command", ""))]
        assert reads, f"{name} no longer reads the training units: update this test"
        for i in reads:
            register = task_list[i]["register"]
            following = task_list[i + 1]
            assert "gpu_fleet.common.preflight" in following, f"{name}: {task_list[i]['name']!r} is not checked"
            (check,) = following["gpu_fleet.common.preflight"]["checks"]
            assert check["ok"] == f"{{{{ {register}.rc | default(0) == 0 }}}}"
            assert "nvidia_driver_busy_units" in check["msg"]


def test_training_is_stopped_only_after_the_reboot_is_known_to_be_allowed():
    task_list = tasks("reboot.yml")
    stop = index_of(task_list, "Stop the training units")
    refusal = index_of(task_list, "Refuse the reboot into a kernel without")
    reboot = index_of(task_list, "Reboot to load the installed driver")
    assert refusal < stop < reboot
