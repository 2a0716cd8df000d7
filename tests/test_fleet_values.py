"""roles/fleet is the one home of the fleet-wide values (docs/contributing.md, "One value, one
name"): an inventory sets fleet_cache_root and the training account once and every role that
reads them follows, a role's own name set in the inventory still wins for that role, and the
play keywords still come from -e. Local hosts only, no containers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from conftest import ansible_playbook

ROOT = Path(__file__).resolve().parent.parent
# The names each role reads from the fleet's, as the roles' own defaults map them.
CACHE_ROOTS = ("hf_env_cache_root", "hf_loader_cache_root", "hf_seed_cache_root")
TRAINING_ACCOUNT = (
    "hf_loader_user",
    "hf_loader_group",
    "slurm_node_cache_test_user",
    "slurm_node_cache_test_group",
    "slurm_node_job_user",
)
ROLES = ("hf_env", "hf_loader", "hf_seed", "slurm_node")


def inventory(tmp_path: Path, group_vars: dict) -> Path:
    (tmp_path / "group_vars").mkdir(exist_ok=True)
    (tmp_path / "group_vars" / "gpu_hosts.yml").write_text(yaml.safe_dump(group_vars))
    hosts = {f"gpu-{n}": {"ansible_connection": "local"} for n in (1, 2, 3)}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"gpu_hosts": {"hosts": hosts}}))
    return tmp_path / "hosts.yml"


def seen(tmp_path: Path, group_vars: dict, *extra: str) -> dict:
    """What the roles' tasks would read on gpu-1: the roles are imported (their defaults load,
    their dependency on fleet with them) and only the probe runs (--tags probe, and not the
    argument checks, which are tagged always)."""
    names = CACHE_ROOTS + TRAINING_ACCOUNT
    pairs = ", ".join(f"'{name}': {name}" for name in names)
    shown = "{{ {" + pairs + "} }}"
    probe = {"name": "Probe", "ansible.builtin.debug": {"msg": shown}, "tags": ["probe"]}
    imports = [{"name": f"Load {role}", "ansible.builtin.import_role": {"name": role}} for role in ROLES]
    book = [{"name": "Probe", "hosts": "gpu-1", "gather_facts": False, "tasks": [*imports, probe]}]
    (tmp_path / "probe.yml").write_text(yaml.safe_dump(book, sort_keys=False))
    only_the_probe = ("--tags", "probe", "--skip-tags", "always")
    done = ansible_playbook(
        inventory(tmp_path, group_vars),
        str(tmp_path / "probe.yml"),
        *only_the_probe,
        *extra,
        env={"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [task] = json.loads(done.stdout)["plays"][0]["tasks"]
    return task["hosts"]["gpu-1"]["msg"]


def test_the_defaults_are_the_fleets():
    fleet = yaml.safe_load((ROOT / "roles" / "fleet" / "defaults" / "main.yml").read_text())
    assert fleet["fleet_cache_root"] == "/data/hf" and fleet["fleet_training_user"] == "trainer"
    for role, names in (("hf_env", ["hf_env_cache_root"]), ("hf_seed", ["hf_seed_cache_root"])):
        role_defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
        assert all(role_defaults[name] == "{{ fleet_cache_root }}" for name in names)
    for role in ROLES:
        assert "fleet" in yaml.safe_load((ROOT / "roles" / role / "meta" / "main.yml").read_text())["dependencies"]


def test_inventory_cache_root_and_account_reach_every_role(tmp_path):
    values = seen(tmp_path, {"fleet_cache_root": "/srv/cache", "fleet_training_user": "alice",
                             "fleet_training_group": "lab"})  # fmt: skip
    assert {name: values[name] for name in CACHE_ROOTS} == dict.fromkeys(CACHE_ROOTS, "/srv/cache")
    assert values["hf_loader_user"] == values["slurm_node_cache_test_user"] == values["slurm_node_job_user"] == "alice"
    assert values["hf_loader_group"] == values["slurm_node_cache_test_group"] == "lab"


def test_without_the_fleet_names_the_roles_keep_todays_values(tmp_path):
    values = seen(tmp_path, {})
    assert {name: values[name] for name in CACHE_ROOTS} == dict.fromkeys(CACHE_ROOTS, "/data/hf")
    assert {name: values[name] for name in TRAINING_ACCOUNT} == dict.fromkeys(TRAINING_ACCOUNT, "trainer")


def test_a_roles_own_name_in_the_inventory_still_wins_for_that_role(tmp_path):
    values = seen(tmp_path, {"fleet_cache_root": "/srv/cache", "hf_loader_cache_root": "/srv/loader"})
    assert values["hf_loader_cache_root"] == "/srv/loader"
    assert values["hf_env_cache_root"] == values["hf_seed_cache_root"] == "/srv/cache"


def test_extra_vars_beat_the_inventory(tmp_path):
    values = seen(tmp_path, {"fleet_cache_root": "/srv/cache"}, "-e", "fleet_cache_root=/srv/extra")
    assert {name: values[name] for name in CACHE_ROOTS} == dict.fromkeys(CACHE_ROOTS, "/srv/extra")


def hosts_of_the_site_play(tmp_path: Path, group_vars: dict, *extra: str) -> list[str]:
    """The hosts site.yml's first play picks (its own hosts: keyword and roles: fleet)."""
    play = yaml.safe_load((ROOT / "site.yml").read_text())[0]
    assert {"role": "fleet"} in play["roles"], "site.yml lists fleet, whose defaults fill its keywords"
    show = {"ansible.builtin.debug": {"msg": "hosts={{ ansible_play_hosts_all | join(',') }}"}, "run_once": True}
    book = [{"name": "Hosts", "hosts": play["hosts"], "gather_facts": False, "roles": ["fleet"], "tasks": [show]}]
    (tmp_path / "hosts_play.yml").write_text(yaml.safe_dump(book, sort_keys=False))
    done = ansible_playbook(inventory(tmp_path, group_vars), str(tmp_path / "hosts_play.yml"), *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return re.search(r"hosts=([\w,-]+)", done.stdout)[1].split(",")


def test_fleet_hosts_from_extra_vars_still_picks_the_hosts(tmp_path):
    assert hosts_of_the_site_play(tmp_path, {}) == ["gpu-1", "gpu-2", "gpu-3"]
    assert hosts_of_the_site_play(tmp_path, {}, "-e", "fleet_hosts=gpu-2") == ["gpu-2"]
    # An inventory cannot set it: play keywords are templated before inventory variables are read.
    assert hosts_of_the_site_play(tmp_path, {"fleet_hosts": "gpu-3"}) == ["gpu-1", "gpu-2", "gpu-3"]


def test_the_fleet_check_refuses_a_misspelt_name_and_leaves_other_fleet_roles_names_alone(tmp_path):
    others = ["-e", "fleet_pull_repo_url=file:///x.git", "-e", "fleet_artifact_name=gpu_fleet_x"]
    assert hosts_of_the_site_play(tmp_path, {}, *others) == ["gpu-1", "gpu-2", "gpu-3"]
    book = [{"name": "Check", "hosts": "gpu_hosts", "gather_facts": False, "roles": ["fleet"]}]
    (tmp_path / "check.yml").write_text(yaml.safe_dump(book))
    done = ansible_playbook(inventory(tmp_path, {"fleet_cahce_root": "/srv/cache"}), str(tmp_path / "check.yml"))
    assert done.returncode != 0
    assert "Unknown variable(s) fleet_cahce_root: fleet knows only" in done.stdout
