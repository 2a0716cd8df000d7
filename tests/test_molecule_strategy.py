"""molecule/shared/strategy_plugins/mitogen_linear.py: mitogen's planner gets the installed
collections' folders from one listing made when the strategy loads, not from a listing in each
worker, and the folders are those mitogen's own function finds."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

STRATEGY = ROOT / "molecule" / "shared" / "strategy_plugins" / "mitogen_linear.py"

# In a fresh interpreter, as ansible-playbook sets up the plugin loader: mitogen's own
# _load_collections, then the strategy's, whose listing must not run again.
PLANNER = """
import importlib.util, json, sys
import ansible.collections.list
from ansible.plugins.loader import init_plugin_loader
init_plugin_loader([sys.argv[2]])
import ansible_mitogen.planner

class Invocation:
    def __init__(self):
        self._extra_sys_paths = set()

own = Invocation()
ansible_mitogen.planner._load_collections(own)
spec = importlib.util.spec_from_file_location("strategy_under_test", sys.argv[1])
strategy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(strategy)
listings = []
real_listing = ansible.collections.list.list_collection_dirs
ansible.collections.list.list_collection_dirs = lambda *a, **k: listings.append(1) or real_listing(*a, **k)
ours = Invocation()
ansible_mitogen.planner._load_collections(ours)
ansible_mitogen.planner._load_collections(ours)
print(json.dumps({
    "replaced": ansible_mitogen.planner._load_collections is strategy.load_collections,
    "own": sorted(own._extra_sys_paths),
    "ours": sorted(ours._extra_sys_paths),
    "listings": len(listings),
}))
"""


def test_mitogen_gets_the_same_collection_folders_without_listing_them_again():
    done = subprocess.run(
        [sys.executable, "-c", PLANNER, str(STRATEGY), str(ROOT / "collections")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["replaced"]
    assert result["listings"] == 0
    assert result["ours"] == result["own"]
    assert any(folder.endswith("/ansible_collections/gpu_fleet/common") for folder in result["ours"]), result["ours"]
