"""gpu_fleet.common.preload_plugins: the collection's controller plugins are imported once in the
main process, so the workers Ansible forks for each task find them already imported.

The loader test runs Ansible's own plugin loaders in a fresh interpreter, as a worker uses them:
without the preload, looking up one filter imports every filter file and its module_utils; after
it, looking up each of the collection's filters, lookups and actions imports nothing more. The
playbook run shows that the project's ansible.cfg enables it and that it runs before the first task.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, ansible_playbook, localhost_inventory

PLUGINS = ROOT / "collections" / "ansible_collections" / "gpu_fleet" / "common" / "plugins"

# In a fresh interpreter: the plugin loader as ansible-playbook sets it up, then (argv[1] ==
# "preload") the callback's preload, then what a worker asks the loaders for: without the preload
# one filter; after it, every filter, lookup and action the preloaded modules hold. Prints the
# collection's modules imported before the lookups and by them.
WORKER = """
import json, sys
from ansible.plugins.loader import action_loader, filter_loader, init_plugin_loader, lookup_loader
init_plugin_loader([sys.argv[2]])
ours = lambda: sorted(m for m in sys.modules if m.startswith("ansible_collections.gpu_fleet.common."))
asked = {"filter": ["paths_to_fix"]}
if sys.argv[1] == "preload":
    from ansible_collections.gpu_fleet.common.plugins.callback.preload_plugins import preload
    preload()
    modules = [m for m in ours() if ".plugins." in m]
    asked = {
        "filter": [n for m in modules if ".filter." in m for n in sys.modules[m].FilterModule().filters()],
        "lookup": [m.rsplit(".", 1)[1] for m in modules if ".lookup." in m],
        "action": [m.rsplit(".", 1)[1] for m in modules if ".action." in m],
    }
before = ours()
loaders = {"filter": filter_loader, "lookup": lookup_loader, "action": action_loader}
found = {
    f"{kind} {name}": loaders[kind].get(f"gpu_fleet.common.{name}", class_only=kind != "filter") is not None
    for kind, names in asked.items()
    for name in names
}
print(json.dumps({"before": before, "lookups": sorted(set(ours()) - set(before)), "found": found}))
"""


def worker_lookups(mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, mode, str(ROOT / "collections")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_a_worker_after_the_preload_imports_nothing_of_the_collection():
    without = worker_lookups("none")
    assert without["before"] == []
    # What every worker paid before: one filter lookup imports all filter files and their module_utils.
    assert len([m for m in without["lookups"] if ".plugins.filter." in m]) == len(
        list((PLUGINS / "filter").glob("*.py"))
    )
    assert any(".plugins.module_utils." in m for m in without["lookups"])

    preloaded = worker_lookups("preload")
    assert set(without["lookups"]) <= set(preloaded["before"])
    assert preloaded["lookups"] == [], f"imported by a worker after the preload: {preloaded['lookups']}"
    # Every filter, lookup and action was asked for, and each resolved to the collection's plugin.
    asked = {name.split()[0] for name in preloaded["found"]}
    assert asked == {"filter", "lookup", "action"} and len(preloaded["found"]) > 40, preloaded["found"]
    assert all(preloaded["found"].values()), preloaded["found"]


PLAYBOOK = """
- name: A filter of the collection in a task
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Paths that differ
      ansible.builtin.debug:
        msg: "{{ {'/x': {'exists': false}} | gpu_fleet.common.paths_to_fix([{'path': '/x', 'state': 'directory'}]) }}"
"""


def test_the_project_enables_it_and_it_runs_before_the_first_task(tmp_path: Path):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    done = ansible_playbook(localhost_inventory(tmp_path), str(playbook), "-vvv", env={"HOME": str(tmp_path)})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    count = sum(len(list((PLUGINS / kind).glob("*.py"))) for kind in ("action", "filter", "lookup", "test"))
    said = f"preload_plugins: {count} plugin modules of ansible_collections.gpu_fleet.common.plugins imported"
    assert output.count(said) == 1, output
    task = output.index("TASK [Paths that differ]")
    assert output.index(said) < task
    assert "msg:\n    - /x\n" in output[task:], output[task:]


def test_molecule_enables_it_as_ansible_cfg_does():
    molecule = yaml.safe_load((ROOT / ".config" / "molecule" / "config.yml").read_text())
    enabled = [name.strip() for name in molecule["ansible"]["cfg"]["defaults"]["callbacks_enabled"].split(",")]
    assert "gpu_fleet.common.preload_plugins" in enabled
