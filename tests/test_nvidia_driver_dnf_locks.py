"""nvidia_driver on dnf: version locks follow the target, and the dry run is the command the role runs.

The versionlock plugin (dnf-plugins-core plugins/versionlock.py) excludes every version of a
locked name but the locked ones, so a lock an earlier pin left at 580 keeps 590 out of
`dnf module switch-to nvidia-driver:590-open` and of the install (issue 29, item 7). Lock lists
below are written as the plugin writes them (`NAME-EPOCH:VERSION-RELEASE.*`, pkgtup2spec; NVIDIA's
driver installation guide, "Version locking", shows the same lines for DNF 4). No RHEL packages
can be fetched here: dnf itself does not run; the role's own expressions are rendered by real
Ansible, and community.general.dnf_versionlock's own matching code is imported from the
controller's collections.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.community.general.plugins.modules import dnf_versionlock
from ansible_collections.gpu_fleet.common.plugins.filter.nvidia_driver import FilterModule
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver import dnf_locks as locks
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.package_index import resolved_packages

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "nvidia_driver"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nvidia"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
RHEL9 = yaml.safe_load((ROLE / "vars" / "RedHat-9.yml").read_text())["__nvidia_driver_platform_data"]
RUNNING_EL9 = "5.14.0-503.14.1.el9_5.x86_64"

# What `dnf versionlock list` prints after the role held pin 580.95.05 (open, headless) with the
# fabric manager of an NVSwitch host, beside an administrator's own lock of an unrelated package.
PINNED_580 = """\
nvidia-driver-cuda-3:580.95.05-1.el9.*
kmod-nvidia-open-dkms-3:580.95.05-1.el9.*
nvidia-persistenced-3:580.95.05-1.el9.*
nvidia-fabricmanager-3:580.95.05-1.el9.*
libnvidia-nscq-3:580.95.05-1.el9.*
bash-0:5.1.8-9.el9.*
"""


def task(file: str, name: str) -> dict:
    """A task of the role by its name, searching blocks too."""

    def walk(tasks):
        for item in tasks or []:
            yield item
            yield from walk(item.get("block"))

    found = [item for item in walk(yaml.safe_load((ROLE / "tasks" / file).read_text())) if item.get("name") == name]
    assert len(found) == 1, f"{file}: no single task named {name!r}"
    return found[0]


def names_in_order(file: str) -> list[str]:
    def walk(tasks):
        for item in tasks or []:
            yield item.get("name", "")
            yield from walk(item.get("block"))

    return list(walk(yaml.safe_load((ROLE / "tasks" / file).read_text())))


def render(tmp_path: Path, cases: dict[str, tuple[str, dict]], platform: str = "RedHat-9") -> dict:
    """The role's own Jinja expressions rendered by real Ansible (one ansible-playbook run on
    localhost), with the role's defaults, vars/main.yml and the platform's vars; each case is an
    expression with its own variables (task vars). Returns the rendered value of each case."""
    out = tmp_path / "rendered"
    out.mkdir()
    tasks = [
        {
            "name": key,
            "vars": {**variables, "probe_expression": expression},
            "ansible.builtin.copy": {"content": "{{ probe_expression | to_json }}", "dest": str(out / f"{key}.json")},
        }
        for key, (expression, variables) in cases.items()
    ]
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [
                str(ROLE / "defaults" / "main.yml"),
                str(ROLE / "vars" / "main.yml"),
                str(ROLE / "vars" / f"{platform}.yml"),
            ],
            "tasks": tasks,
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts"),
    }
    done = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            *("-i", "localhost,", str(tmp_path / "play.yml")),
            *("-e", f"ansible_python_interpreter={sys.executable}"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {key: json.loads((out / f"{key}.json").read_text()) for key in cases}


def lock_decision() -> str:
    return task("plan.yml", "Decide which version locks follow the target")["ansible.builtin.set_fact"][
        "__nvidia_driver_dnf_lock_plan"
    ]


def dry_run_argv() -> str:
    return task("packages.yml", "Resolve the exact package set without installing (dnf)")["ansible.builtin.command"][
        "argv"
    ]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    """Every expression of the role these tests read, rendered in one Ansible run."""
    return render(
        tmp_path_factory.mktemp("ansible"),
        {
            "locks_after_pin": (
                lock_decision(),
                {"nvidia_driver_branch": "590", "__nvidia_driver_dnf_locks": {"rc": 0, "stdout": PINNED_580}},
            ),
            "locks_without_plugin": (
                lock_decision(),
                {
                    "nvidia_driver_branch": "590",
                    "__nvidia_driver_dnf_locks": {"rc": 1, "stdout": "", "stderr": "No such command: versionlock"},
                },
            ),
            "dry_run": (
                dry_run_argv(),
                {
                    "nvidia_driver_version": "580.95.05",
                    "ansible_facts": {"kernel": RUNNING_EL9, "architecture": "x86_64"},
                    "__nvidia_driver_boot": {"kernel": RUNNING_EL9, "known": True},
                },
            ),
        },
    )


# ----------------------------------------------------------------- item 7: the lock follows the target


def test_a_branch_only_run_after_a_pin_drops_the_roles_locks_before_the_switch():
    """The 580.95.05 locks hide every 590 package: a later `-e nvidia_driver_branch=590` run must
    drop them (and only them) before `module switch-to`, or dnf keeps 580."""
    plan = FilterModule().filters()["nvidia_driver_dnf_lock_plan"](PINNED_580, RHEL9, "590")
    assert plan == {"delete": PINNED_580.splitlines()[:5], "errors": []}


def test_locks_inside_the_branch_stay_for_a_branch_only_target_and_a_new_pin_drops_the_old_one():
    # Branch 580 without a pin: the host stays where the pin left it (no drift inside the branch).
    assert locks.dnf_lock_plan(PINNED_580, RHEL9, "580") == {"delete": [], "errors": []}
    # A new pin in the same branch: the old pin's locks go, the administrator's bash lock stays.
    plan = locks.dnf_lock_plan(PINNED_580, RHEL9, "580", "580.105.08")
    assert plan["delete"] == PINNED_580.splitlines()[:5] and plan["errors"] == []


def test_locks_of_another_module_type_flavour_or_fabric_manager_branch_are_the_roles_own():
    listing = (
        "kmod-nvidia-latest-dkms-3:570.195.03-1.el9.*\n"  # proprietary modules before
        "nvidia-driver-3:570.195.03-1.el9.*\n"  # desktop flavour before
        "nvidia-fabric-manager-3:570.195.03-1.el9.*\n"  # the fabric manager's name before 580
        "libnvidia-nscq-570-3:570.195.03-1.el9.*\n"  # branch in the name before 580
    )
    plan = locks.dnf_lock_plan(listing, RHEL9, "580", "580.95.05")
    assert plan == {"delete": listing.splitlines(), "errors": []}


def test_locks_of_nvidia_packages_the_role_does_not_hold_are_refused_before_any_change():
    """NVIDIA's guide locks `*nvidia*575*` (its own example lines): the driver's dependencies at
    575 would make dnf refuse 580's. The role does not remove what it did not write: it refuses,
    naming the entries and the command that removes them."""
    guide = (
        "kmod-nvidia-open-dkms-3:575.51-1.fc41.*\n"
        "nvidia-kmod-common-3:575.51-1.fc41.*\n"
        "nvidia-driver-cuda-libs-3:575.51-1.fc41.*\n"
        "nvidia-container-toolkit-0:1.17.8-1.*\n"  # its own numbering: not a driver lock
    )
    plan = locks.dnf_lock_plan(guide, RHEL9, "580")
    assert plan["delete"] == ["kmod-nvidia-open-dkms-3:575.51-1.fc41.*"]
    assert len(plan["errors"]) == 1
    error = plan["errors"][0]
    assert "nvidia-kmod-common-3:575.51-1.fc41.*" in error and "nvidia-driver-cuda-libs-3:575.51-1.fc41.*" in error
    assert "nvidia-container-toolkit" not in error
    assert "dnf versionlock delete" in error and "nvidia_driver_branch 580" in error
    # The same locks at the target are no obstacle.
    at_target = guide.replace("575.51", "580.95.05")
    assert locks.dnf_lock_plan(at_target, RHEL9, "580")["errors"] == []


def test_an_exclude_of_the_target_is_refused_and_raw_branch_locks_are_read():
    assert locks.dnf_lock_plan("!nvidia-driver-cuda-3:580.95.05-1.el9.*\n", RHEL9, "580", "580.95.05")["errors"]
    # An exclude of another version hides nothing the target needs.
    assert locks.dnf_lock_plan("!nvidia-driver-cuda-3:580.82.07-1.el9.*\n", RHEL9, "580", "580.95.05") == {
        "delete": [],
        "errors": [],
    }
    # `dnf versionlock add --raw 'nvidia-driver-cuda-3:580.*'` holds the branch.
    raw = "nvidia-driver-cuda-3:580.*\n"
    assert locks.dnf_lock_plan(raw, RHEL9, "580")["delete"] == []
    assert locks.dnf_lock_plan(raw, RHEL9, "580", "580.95.05")["delete"] == []
    assert locks.dnf_lock_plan(raw, RHEL9, "590")["delete"] == ["nvidia-driver-cuda-3:580.*"]


def test_the_lock_after_the_install_takes_the_pin_or_the_version_the_branch_install_left():
    names = ["nvidia-driver-cuda", "kmod-nvidia-open-dkms", "nvidia-persistenced"]
    # Branch only, nothing held: bare names, which the plugin resolves to the installed package.
    assert locks.versionlock_plan("", names, "590") == {"delete": [], "add": names}
    assert locks.versionlock_plan("", names, "590", "590.44.01")["add"] == [f"{name}-590.44.01" for name in names]


def test_a_second_run_finds_its_own_locks_and_changes_nothing():
    """The lines community.general.dnf_versionlock makes the plugin write for the installed
    packages (pkgtup2spec: NAME-EPOCH:VERSION-RELEASE.*) are on target: nothing to drop or add."""
    names = ["nvidia-driver-cuda", "kmod-nvidia-open-dkms", "nvidia-persistenced"]
    written = "".join(f"\n# Added lock on Fri Dec  4 21:00:00 2026\n{name}-3:590.44.01-1.el9.*\n" for name in names)
    assert locks.versionlock_plan(written, names, "590") == {"delete": [], "add": []}
    assert locks.versionlock_plan(written, names, "590", "590.44.01") == {"delete": [], "add": []}
    assert locks.dnf_lock_plan(written, RHEL9, "590") == {"delete": [], "errors": []}
    # The module's own idempotence test is the same line in `dnf versionlock list`.
    assert all(f"{name}-3:590.44.01-1.el9.*" in written.split() for name in names)


def test_the_module_deletes_exactly_the_stale_lines_and_a_name_would_take_the_target_too():
    """community.general.dnf_versionlock, state absent: raw specs must be lines of the list
    (`p in locklist_pre`); a bare name goes through the plugin's _match, which matches every
    version of the name, the target's too, hence raw."""
    listing = PINNED_580 + "nvidia-driver-cuda-3:590.44.01-1.el9.*\n"
    plan = locks.dnf_lock_plan(listing, RHEL9, "590")
    locklist_pre = listing.split()  # what the module reads: `dnf -q versionlock list`, split
    assert plan["delete"] and all(entry in locklist_pre for entry in plan["delete"])
    assert "nvidia-driver-cuda-3:590.44.01-1.el9.*" not in plan["delete"]
    assert dnf_versionlock.match("nvidia-driver-cuda-3:590.44.01-1.el9.*", "nvidia-driver-cuda")


def test_the_role_drops_its_locks_before_the_switch_and_switches_with_allowerasing():
    order = names_in_order("repository.yml")
    drop = "Drop the role's version locks held at another driver than the target"
    switch = "Enable the module stream of the branch and module type"
    assert order.index(drop) < order.index(switch)
    module = task("repository.yml", drop)["community.general.dnf_versionlock"]
    assert module == {"name": "{{ __nvidia_driver_dnf_lock_plan.delete }}", "raw": True, "state": "absent"}
    # NVIDIA's guide, "Switching between Driver Module Flavors": switch-to ... --allowerasing.
    assert "--allowerasing" in task("repository.yml", switch)["ansible.builtin.command"]["argv"]


def test_the_plan_reads_the_locks_and_refuses_before_the_first_change(rendered):
    """plan.yml runs before repository.yml (gpu.yml); its decision, rendered by Ansible from the
    role's own expression, names the lines to drop, and its check (the preflight action) fails on the errors."""
    gpu = [step["name"] for step in yaml.safe_load((ROLE / "tasks" / "gpu.yml").read_text())]
    assert gpu.index("Check that the sources carry the driver and the kernel headers") < gpu.index(
        "Configure the package source"
    )
    refuse = task("plan.yml", "Refuse version locks that would keep the target out")["gpu_fleet.common.preflight"]
    assert [check["ok"] for check in refuse["checks"]] == ["{{ __nvidia_driver_dnf_lock_plan.errors | length == 0 }}"]
    assert rendered["locks_after_pin"] == {"delete": PINNED_580.splitlines()[:5], "errors": []}
    # Without the plugin `dnf versionlock list` fails: nothing is held, nothing to drop.
    assert rendered["locks_without_plugin"] == {"delete": [], "errors": []}


def test_a_branch_only_target_is_installed_and_held_through_versionlock_too():
    """Before, only an exact pin went through versionlock.yml; a branch-only run installed with
    `state: present` and left the old pin's locks and no lock of its own."""
    include = task("packages.yml", "Install and hold the driver packages at the target (dnf versionlock)")
    assert include["ansible.builtin.include_tasks"]["file"] == "versionlock.yml"
    assert not any("nvidia_driver_version" in condition for condition in include["when"])
    assert include["vars"]["__nvidia_driver_lock_version"] == "{{ nvidia_driver_version }}"
    steps = names_in_order("versionlock.yml")
    assert steps.index("Drop locks that hold these packages at another version") < steps.index(
        "Install the packages at the target"
    )
    assert steps.index("Install the packages at the target") < steps.index("Lock the packages at the installed version")
    lock = task("versionlock.yml", "Lock the packages at the installed version")["community.general.dnf_versionlock"]
    assert lock == {"name": "{{ __nvidia_driver_lock_plan.add }}", "state": "present"}  # not raw: the installed NEVRA
    # The module fails without the plugin's configuration: check mode on a host without the plugin skips it.
    guard = task("versionlock.yml", "Lock the packages at the installed version")["when"]
    assert "not (ansible_check_mode and __nvidia_driver_lock_plugin is changed)" in guard


# ------------------------------------------------ item 8: the dry run recorded from the role's command

DRY_RUN = "handwritten_rhel9_580.95.05_dnf-install-assumeno.txt"


def fixture_command_and_rows(name: str) -> tuple[list[str], list[dict]]:
    text = (FIXTURES / name).read_text()
    header = " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    command = re.search(r"`(dnf install --assumeno [^`]+)`", header)
    assert command, f"{name} does not name the command it is the output of"
    output = "".join(line + "\n" for line in text.splitlines() if not line.startswith("# "))
    return command.group(1).split(), resolved_packages(output)


def test_the_rhel_dry_run_fixture_is_the_output_of_the_command_the_role_runs(rendered):
    command, rows = fixture_command_and_rows(DRY_RUN)
    assert rendered["dry_run"] == command
    installed = {row["name"]: row["version"] for row in rows}
    for spec in command[3:]:  # every package the command names is in the transaction
        name = max((name for name in installed if spec == name or spec.startswith(f"{name}-")), key=len)
        assert spec == name or spec[len(name) + 1 :] in f"{installed[name]}.x86_64"
    # The running kernel's kernel-devel-matched satisfies dkms: no other kernel comes in.
    assert not any(name in installed for name in ("kernel", "kernel-core", "kernel-modules"))
    assert installed["kernel-devel-matched"] == installed["kernel-devel"] == "5.14.0-503.14.1.el9_5"
    assert installed["kmod-nvidia-open-dkms"] == "3:580.95.05-1.el9" and installed["dkms"].endswith(".el9")
