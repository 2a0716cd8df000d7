"""Molecule's host definition is written once a file, and no scenario's hosts drift from the shared one.

A scenario that needs hosts of its own (a third host, an extra mount) replaces the shared list of
.config/molecule/config.yml, since Molecule replaces lists rather than merging them. Its file
writes one host in full and makes the others from it with a YAML merge key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / ".config" / "molecule" / "config.yml"
# What makes a host a systemd container like every other; a scenario may add volumes, groups, a name.
SHARED_KEYS = ("pre_build_image", "command", "privileged", "cgroupns_mode", "tmpfs")
CGROUP_MOUNT = "/sys/fs/cgroup:/sys/fs/cgroup:rw"

SCENARIOS_WITH_PLATFORMS = sorted(
    path for path in (ROOT / "molecule").glob("*/molecule.yml") if "platforms" in yaml.safe_load(path.read_text())
)


def drift(host: dict, shared: dict) -> list[str]:
    """What in a scenario's host differs from the shared host definition."""
    problems = [key for key in SHARED_KEYS if host.get(key) != shared[key]]
    if CGROUP_MOUNT not in host.get("volumes", []):
        problems.append("volumes (the cgroup mount)")
    if not str(host.get("image", "")).startswith("local/debian-systemd:"):
        problems.append("image")
    return problems


def written_in_full(text: str) -> int:
    """How many hosts a molecule.yml spells out, not made from another by a merge key."""
    return sum(1 for line in text.splitlines() if line.strip() == "command: /lib/systemd/systemd")


def test_some_scenarios_have_hosts_of_their_own():
    assert SCENARIOS_WITH_PLATFORMS, "no scenario has platforms of its own: this test checks nothing"


def test_the_shared_file_writes_its_host_once():
    assert written_in_full(BASE.read_text()) == 1, f"{BASE.relative_to(ROOT)}: make the second host with <<: *host"


@pytest.mark.parametrize("config", SCENARIOS_WITH_PLATFORMS, ids=lambda path: path.parent.name)
def test_a_scenarios_hosts_are_the_shared_host(config):
    shared = yaml.safe_load(BASE.read_text())["platforms"][0]
    for host in yaml.safe_load(config.read_text())["platforms"]:
        assert drift(host, shared) == [], f"{config.parent.name}: {host['name']} differs from {BASE.name}"
    assert written_in_full(config.read_text()) == 1, (
        f"{config.relative_to(ROOT)} writes more than one host in full: make the others from the first"
        " with a YAML merge key (<<: *host)"
    )


def test_a_drifted_or_copied_host_is_caught():
    shared = yaml.safe_load(BASE.read_text())["platforms"][0]
    assert drift({**shared, "privileged": False}, shared) == ["privileged"]
    assert drift({**shared, "volumes": []}, shared) == ["volumes (the cgroup mount)"]
    copied = (
        (ROOT / "molecule" / "hf_seed" / "molecule.yml")
        .read_text()
        .replace("  - <<: *host\n", "  - <<: *host\n    command: /lib/systemd/systemd\n")
    )
    assert written_in_full(copied) > 1
