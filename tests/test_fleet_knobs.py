"""The play keywords site.yml takes from the fleet knobs (hosts:, serial:, max_fail_percentage:) are
templated before Ansible reads any inventory variable: set in group_vars or host_vars they are
ignored without a word, and a rollout meant to go a quarter of the fleet at a time goes all at
once. They are set with -e (docs/fleet.md), and no inventory of the project sets them."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from conftest import ansible_playbook

ROOT = Path(__file__).resolve().parent.parent
PLAY_KEYWORD_KNOBS = ("fleet_hosts", "fleet_serial", "fleet_max_fail_percentage")


def site_play() -> dict:
    return yaml.safe_load((ROOT / "site.yml").read_text())[0]


def batches(tmp_path: Path, group_vars: dict, *extra: str) -> list[list[str]]:
    """The batches site.yml's own hosts/serial keywords make of three local hosts."""
    (tmp_path / "group_vars").mkdir(exist_ok=True)
    (tmp_path / "group_vars" / "gpu_hosts.yml").write_text(yaml.safe_dump(group_vars))
    hosts = {f"gpu-{n}": {"ansible_connection": "local"} for n in (1, 2, 3)}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"gpu_hosts": {"hosts": hosts}}))
    play = site_play()
    show_batch = {"ansible.builtin.debug": {"msg": "batch={{ ansible_play_batch | join(',') }}"}, "run_once": True}
    book = [
        {
            "name": "Batches",
            "hosts": play["hosts"],
            "serial": play["serial"],
            "max_fail_percentage": play["max_fail_percentage"],
            "gather_facts": False,
            "roles": ["fleet"],
            "tasks": [show_batch],
        }
    ]
    (tmp_path / "batches.yml").write_text(yaml.safe_dump(book, sort_keys=False))
    done = ansible_playbook(tmp_path / "hosts.yml", str(tmp_path / "batches.yml"), *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return [line.split(",") for line in re.findall(r"batch=([\w,-]+)", done.stdout)]


def test_site_takes_its_play_keywords_from_the_knobs():
    play = site_play()
    assert "fleet_hosts" in play["hosts"]
    assert "fleet_serial" in play["serial"]
    assert "fleet_max_fail_percentage" in play["max_fail_percentage"]


def test_serial_from_group_vars_is_ignored_and_from_extra_vars_is_honoured(tmp_path):
    all_at_once = [["gpu-1", "gpu-2", "gpu-3"]]
    assert batches(tmp_path, {"fleet_serial": 1}) == all_at_once
    assert batches(tmp_path, {}, "-e", "fleet_serial=1") == [["gpu-1"], ["gpu-2"], ["gpu-3"]]


def test_no_inventory_of_the_project_sets_a_play_keyword_knob():
    setting = {}
    for path in sorted((ROOT / "inventory").rglob("*")):
        if path.suffix in (".yml", ".yaml") and path.is_file():
            for name in PLAY_KEYWORD_KNOBS:
                if re.search(rf"(?m)^\s*{name}\s*:", path.read_text()):
                    setting.setdefault(str(path.relative_to(ROOT)), []).append(name)
    assert setting == {}, "set these with -e: Ansible never reads them from an inventory (docs/fleet.md)"
