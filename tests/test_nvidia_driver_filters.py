"""The nvidia_driver role's decisions, tested from hand-written and captured outputs.

Fixtures in tests/fixtures/nvidia/ named `handwritten_*` were written by hand after
public outputs of nvidia-smi, /proc/driver/nvidia/version, /proc/modules, sysfs and
dnf on GPU hosts, not captured on GPUs: each names where its shape comes from and what
in it is invented (a `# ` header above a file's output, a SOURCE file in a tree).
`captured_*` were captured on this project's machines: the Molecule containers, and
`captured_h200-vm_*` by scripts/gpu-host-check.sh on a single-H200 virtual machine
(driver 580.159.04, open modules, from the image) with the role's own probe script
and nvidia-smi query.
"""

import ast
import json
import re
from pathlib import Path

import jinja2
import pytest
import yaml
from ansible_collections.gpu_fleet.common.plugins.filter.nvidia_driver import FilterModule
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.boot import (
    boot_kernel,
    boot_module_errors,
    is_controller,
    reboot_decision,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.compatibility import (
    module_type_errors,
    secure_boot_errors,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.dnf_locks import versionlock_plan
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.fabric_manager import (
    fabric_manager,
    fabric_manager_errors,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.hardware_probe import hardware_report
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.installed import (
    install_plan,
    installed_driver_version,
    installed_package_set,
    installed_packages,
    unbuilt_kernels,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.nvidia_smi import (
    parse_nvidia_smi_csv,
    verify,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.package_index import (
    availability_errors,
    carried_versions,
    missing_packages,
    resolved_packages,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.packages import (
    apt_pin_version,
    driver_marker,
    kernel_header_metapackages,
    kernel_header_packages,
    marker_prefix,
    package_names,
    package_specs,
    plan_errors,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.probe import (
    host_state,
    parse_pci_listing,
    parse_probe,
    parse_proc_version,
    parse_units,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.repositories import (
    existing_source_plan,
    rhel_repo_plan,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import (
    pin_in_branch,
    upstream_version,
    valid_branch,
    valid_kernel,
    valid_pin,
    version_compare,
    version_matches,
    version_tuple,
)

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "nvidia_driver"
COLLECTION = ROOT / "collections" / "ansible_collections" / "gpu_fleet" / "common"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nvidia"


ROLE_VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
SMI_FIELDS = ROLE_VARS["__nvidia_driver_smi_fields"]


def fixture(name: str) -> str:
    """The output a fixture holds, without the `# ` lines above it that name its source."""
    lines = (FIXTURES / name).read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("# "):
        lines.pop(0)
    return "".join(lines)


# Where a hand-written fixture's shape comes from: a public issue or pull request (owner/name issue N),
# NVIDIA's driver container scripts, the PCI ID Repository, or another fixture that names its own.
SOURCE_NAMED = re.compile(
    r"[\w.-]+/[\w.-]+ (?:issue|pull) \d+|NVIDIA/gpu-driver-container|PCI ID Repository"
    r"|(?:handwritten|captured)_[\w.-]+"
)


def handwritten_source(path: Path) -> str:
    if path.is_dir():
        return (path / "SOURCE").read_text() if (path / "SOURCE").is_file() else ""
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("# "):
            break
        header.append(line[2:])
    return "\n".join(header)


def test_every_nvidia_fixture_says_whether_it_was_captured_or_written_by_hand():
    names = sorted(path.name for path in FIXTURES.iterdir())
    assert [name for name in names if not name.startswith(("captured_", "handwritten_"))] == []


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("handwritten_*")), ids=lambda path: path.name)
def test_every_handwritten_fixture_names_its_public_source_and_what_is_invented(path):
    source = " ".join(handwritten_source(path).split())
    assert source.startswith("Handwritten, not captured"), f"{path.name}: no source header (# lines or SOURCE)"
    assert SOURCE_NAMED.search(source), f"{path.name} does not say where its shape comes from: {source}"
    assert "invented" in source or "left out" in source, f"{path.name} does not say what in it is made up"


def platform(name: str) -> dict:
    return yaml.safe_load((ROLE / "vars" / f"{name}.yml").read_text())["__nvidia_driver_platform_data"]


def no_commands_fixture(argv):
    """A runner fixture for fixture trees: the probe must run no command there (modinfo would describe this machine)."""
    raise AssertionError(f"the hardware probe ran {argv} on a fixture tree")


def probe(tree: str) -> str:
    """The role's own probe (nvidia_driver_probe, concern hardware) on a fixture tree, as the role runs it on '/'."""
    return hardware_report(no_commands_fixture, str(FIXTURES / tree))


# ----------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ("580.95.05", "580.95.05", 0),
        ("580.105.08", "580.95.05", 1),  # as strings "580.105.08" < "580.95.05": numbers win
        ("580.95.05", "580.9.5", 1),
        ("580.95.05", "580.95.5", 0),  # 05 and 5 are the same number
        ("535.183.01", "580.65.06", -1),
        ("1000.1.1", "999.9.9", 1),
        ("580.95.05-1", "580.95.05", 0),  # Debian revision dropped
        ("3:580.95.05-1.el9", "580.95.05", 0),  # RPM epoch and release dropped
        ("580.95.05-0ubuntu0.24.04.2", "580.82.07", 1),
        ("390.157", "390.157.0", 0),
    ],
)
def test_versions_compare_as_numbers(left, right, expected):
    assert version_compare(left, right) == expected


@pytest.mark.parametrize("bad", ["", "latest", "v580", "five-eighty", None])
def test_version_parse_refuses_what_is_no_version(bad):
    with pytest.raises(ValueError, match="not an NVIDIA driver version"):
        version_tuple(bad)


@pytest.mark.parametrize(
    ("branch", "valid"),
    [
        ("580", True),
        (580, True),
        ("535", True),
        ("58x", False),
        ("58", False),
        ("5800", False),
        ("580.95", False),
        ("", False),
        (True, False),
        (None, False),
        ("058", False),
    ],
)
def test_branch_strings(branch, valid):
    assert valid_branch(branch) is valid


@pytest.mark.parametrize(
    ("pin", "branch", "belongs"),
    [
        ("580.95.05", "580", True),
        ("580.82.07", 580, True),
        ("570.172.08", "580", False),
        ("5800.95.05", "580", False),
        ("580.95.05", "58", False),
        ("580", "580", False),  # a branch is no pin
        ("580.95.05-1", "580", False),  # a package version is no pin either
        ("390.157", "390", True),
    ],
)
def test_pin_belongs_to_branch(pin, branch, belongs):
    assert pin_in_branch(pin, branch) is belongs


@pytest.mark.parametrize(
    ("version", "pin", "branch", "matches"),
    [
        ("580.95.05", "580.95.05", "580", True),
        ("580.95.05", "580.82.07", "580", False),
        ("580.95.05", "", "580", True),
        ("590.44.01", "", "580", False),
        ("", "", "580", False),
        ("garbage", "", "580", False),
    ],
)
def test_running_version_matches_pin_or_branch(version, pin, branch, matches):
    assert version_matches(version, pin, branch) is matches


# --------------------------------------------------------------- nvidia-smi


def test_nvidia_smi_h100_rows():
    rows = parse_nvidia_smi_csv(fixture("handwritten_h100_580.95.05_nvidia-smi.csv"), SMI_FIELDS)
    assert len(rows) == 8
    assert rows[0]["name"] == "NVIDIA H100 80GB HBM3"
    # nvidia-smi writes the bus id in upper-case hex (sysfs names the same function 0000:2a:00.0).
    assert [row["pci.bus_id"] for row in rows[:2]] == ["00000000:18:00.0", "00000000:2A:00.0"]
    assert rows[7]["index"] == "7"
    assert {row["driver_version"] for row in rows} == {"580.95.05"}
    assert all(row["uuid"].startswith("GPU-") for row in rows)
    assert rows[0]["memory.total"] == "81559"


def test_nvidia_smi_not_available_values_become_none():
    rows = parse_nvidia_smi_csv(fixture("handwritten_rtx4090_580.82.07_nvidia-smi.csv"), SMI_FIELDS)
    assert rows[0]["serial"] is None
    assert rows[0]["persistence_mode"] == "Disabled"


def test_nvidia_smi_wrong_field_count_is_an_error():
    with pytest.raises(ValueError, match="has 8 values for 3 fields"):
        parse_nvidia_smi_csv(fixture("handwritten_h100_580.95.05_nvidia-smi.csv"), ["index", "name", "uuid"])


def test_nvidia_smi_empty_output_is_no_gpu():
    assert parse_nvidia_smi_csv("", SMI_FIELDS) == []


# ------------------------------------------------------------- verification


def smi(name):
    return parse_nvidia_smi_csv(fixture(name), SMI_FIELDS)


def test_verify_passes_on_the_pinned_driver_with_the_expected_count():
    result = verify(smi("handwritten_h100_580.95.05_nvidia-smi.csv"), pin="580.95.05", branch="580", expected_count=8)
    assert result["verified"], result["problems"]
    assert result["gpu_count"] == 8
    assert result["driver_version"] == "580.95.05"


def test_verify_branch_only():
    assert verify(smi("handwritten_h100_580.95.05_nvidia-smi.csv"), branch="580")["verified"]


def test_verify_names_a_wrong_pin():
    result = verify(smi("handwritten_h100_580.95.05_nvidia-smi.csv"), pin="580.82.07", branch="580")
    assert not result["verified"]
    assert "580.95.05 is running, wanted exactly 580.82.07 (nvidia_driver_version)" in result["problems"][0]


def test_verify_names_a_wrong_branch():
    result = verify(smi("handwritten_a100_535.183.01_nvidia-smi.csv"), branch="580")
    assert result["problems"] == ["driver 535.183.01 is running, wanted branch 580 (nvidia_driver_branch)"]


def test_verify_gpu_count():
    result = verify(smi("handwritten_h100_580.95.05_nvidia-smi.csv"), branch="580", expected_count=4)
    assert result["problems"] == ["nvidia-smi lists 8 GPU(s), nvidia_driver_expected_gpu_count is 4"]
    assert verify(smi("handwritten_h100_580.95.05_nvidia-smi.csv"), branch="580", expected_count=0)["verified"]


def test_verify_persistence_mode():
    result = verify(smi("handwritten_h100_580.95.05_persistence-off_nvidia-smi.csv"), branch="580")
    assert result["problems"] == ["persistence mode is off on GPU(s) 0, 1"]


def test_verify_no_gpu_listed():
    assert "nvidia-smi lists no GPU" in verify([], branch="580")["problems"]


# --------------------------------------------------- /proc and sysfs parsing


@pytest.mark.parametrize(
    ("name", "version", "modules", "arch"),
    [
        ("handwritten_580.95.05_open_proc-driver-nvidia-version.txt", "580.95.05", "open", "x86_64"),
        ("handwritten_535.183.01_proprietary_proc-driver-nvidia-version.txt", "535.183.01", "proprietary", "x86_64"),
        ("handwritten_580.95.05_open_aarch64_proc-driver-nvidia-version.txt", "580.95.05", "open", "aarch64"),
    ],
)
def test_proc_driver_version(name, version, modules, arch):
    parsed = parse_proc_version(fixture(name))
    assert (parsed["version"], parsed["kernel_modules"], parsed["arch"]) == (version, modules, arch)
    assert parsed["gcc"].startswith("gcc version")


def test_proc_driver_version_absent_means_not_loaded():
    assert parse_proc_version("")["version"] == ""


def test_proc_driver_version_garbage_is_an_error():
    with pytest.raises(ValueError, match="no version"):
        parse_proc_version("NVRM version: something else entirely\n")


def test_hgx_tree_through_the_role_probe():
    state = host_state(probe("handwritten_tree_hgx_h100_8gpu_nvswitch_580.95.05_open"))
    assert state["gpu_count"] == 8  # the ASPEED BMC VGA is no NVIDIA GPU
    assert state["gpu_device_ids"] == ["0x2330"]
    assert state["nvswitch_count"] == 4 and state["nvswitch_present"]
    assert state["nvswitch_device_ids"] == ["0x22a3"]
    assert state["gpu_addresses"][0] == "0000:18:00.0"
    assert state["loaded_version"] == "580.95.05"
    assert state["loaded_kernel_modules"] == "open"
    assert state["nvidia_loaded"] and not state["nouveau_loaded"]
    assert state["module_on_disk_version"] == ""  # modinfo only runs on the real root


def test_workstation_with_nouveau_through_the_role_probe():
    state = host_state(probe("handwritten_tree_rtx4090_nouveau_no_driver"))
    assert state["gpu_count"] == 1  # the HDMI audio function 0x22ba is not counted
    assert state["gpu_device_ids"] == ["0x2684"]
    assert not state["nvswitch_present"]
    assert state["nouveau_loaded"] and not state["nvidia_loaded"]
    assert state["loaded_version"] == ""


def test_vm_without_gpu_through_the_role_probe():
    state = host_state(probe("handwritten_tree_vm_no_gpu"))
    assert state["gpu_count"] == 0 and not state["gpu_present"]
    assert state["nvswitch_count"] == 0
    assert not state["nouveau_loaded"] and not state["nvidia_loaded"]


def test_probe_of_an_empty_root_is_no_gpu(tmp_path):
    state = host_state(probe(tmp_path))
    assert state["gpu_count"] == 0 and state["loaded_version"] == ""


def test_pci_listing_ignores_unreadable_lines():
    devices = parse_pci_listing("0000:01:00.0 0x10de 0x2330 0x030200\nbroken line\n0000:02:00.0 0x10de zz 0x030200\n")
    assert [device["address"] for device in devices] == ["0000:01:00.0"]


H200_VM = "captured_h200-vm_580.159.04_open"


def test_captured_h200_vm_probe():
    state = host_state(fixture(f"{H200_VM}_probe.txt"))
    # Six virtio and host-bridge functions beside the GPU; the GPU is a 3D controller (0x0302).
    assert state["gpu_count"] == 1 and state["gpu_device_ids"] == ["0x2335"]
    assert state["gpu_addresses"] == ["0000:00:06.0"]
    assert not state["nvswitch_present"]
    assert state["loaded_version"] == "580.159.04" and state["loaded_kernel_modules"] == "open"
    assert state["nvidia_loaded"] and not state["nouveau_loaded"]
    assert state["module_on_disk_version"] == ""  # the image has no module under /lib/modules: modinfo finds none


def test_captured_h200_vm_proc_version_and_nvidia_smi():
    parsed = parse_proc_version(fixture(f"{H200_VM}_proc-driver-nvidia-version.txt"))
    assert (parsed["version"], parsed["kernel_modules"], parsed["arch"]) == ("580.159.04", "open", "x86_64")
    rows = smi("captured_h200-vm_580.159.04_nvidia-smi.csv")
    assert [(row["name"], row["memory.total"], row["persistence_mode"]) for row in rows] == [
        ("NVIDIA H200", "143771", "Enabled")
    ]
    assert verify(rows, pin="580.159.04", branch="580", expected_count=1)["verified"]
    assert verify(rows, pin="580.159.4", branch="580")["verified"]  # numbers, not strings
    assert verify(rows, branch="580", expected_count=2)["problems"] == [
        "nvidia-smi lists 1 GPU(s), nvidia_driver_expected_gpu_count is 2"
    ]
    assert verify(rows, branch="570")["problems"] == [
        "driver 580.159.04 is running, wanted branch 570 (nvidia_driver_branch)"
    ]


def test_captured_h200_vm_preinstalled_driver_needs_no_reboot():
    state = host_state(fixture(f"{H200_VM}_probe.txt"))
    # nvidia_driver_preinstalled takes the loaded version as the installed one, and defers.
    decision = reboot_decision(state, installed_version=state["loaded_version"], defer=True)
    assert decision == {"required": False, "reasons": [], "action": "none", "busy_units": [], "stop_units": []}
    assert reboot_decision(state)["action"] == "none"  # nothing on disk to compare with


def test_captured_h200_vm_report_is_what_the_role_decides_from_that_hosts_probe_and_nvidia_smi():
    """The local fact the role wrote on the H200 VM in verify-only mode (nvidia_driver_preinstalled,
    defaults otherwise), checked against what the role's filters decide today from the probe and
    nvidia-smi output captured on the same host in the same run: a change in what the filters
    read from a real host, or in the report's fields, fails here."""
    report = json.loads(fixture("captured_h200-vm_580.159.04_preinstalled_nvidia_driver.fact"))
    state = host_state(fixture(f"{H200_VM}_probe.txt"))
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    # detect.yml: where the image owns the driver, the loaded version is the installed one.
    installed = state["loaded_version"] or state["module_on_disk_version"]
    # verify.yml: nvidia-smi's rows against the pin, branch and count asked for (the defaults).
    verification = verify(
        smi("captured_h200-vm_580.159.04_nvidia-smi.csv"),
        defaults["nvidia_driver_version"],
        defaults["nvidia_driver_branch"],
        defaults["nvidia_driver_expected_gpu_count"],
    )
    # reboot.yml: the image's owner reboots it; the role only defers.
    reboot = reboot_decision(state, installed_version=installed, defer=True)
    decided = {
        "action": "preinstalled",
        "branch": defaults["nvidia_driver_branch"],
        "pin": defaults["nvidia_driver_version"],
        "source": defaults["nvidia_driver_source"],
        "kernel_modules": defaults["nvidia_driver_kernel_modules"],
        "driver_version": installed,
        "loaded_version": state["loaded_version"],
        "loaded_kernel_modules": state["loaded_kernel_modules"],
        "nouveau_loaded": state["nouveau_loaded"],
        "gpu_count": state["gpu_count"],
        "gpu_device_ids": state["gpu_device_ids"],
        "nvswitch_count": state["nvswitch_count"],
        "verified": verification["verified"],
        "problems": verification["problems"],
        "reboot_required": reboot["required"],
        "reboot_reasons": reboot["reasons"],
        "packages": [],  # the role configures nothing where the image owns the driver
        "package_set": [],
        "fabric_manager": "",  # one H200, no NVSwitch: none needed
    }
    assert {key: report[key] for key in decided} == decided
    # Every field the fact holds is one report.yml still writes (fields added since are not in it).
    (task,) = yaml.safe_load((ROLE / "tasks" / "report.yml").read_text())
    assert set(report) <= set(task["ansible.builtin.set_fact"]["nvidia_driver_report"])
    assert set(report) == set(decided)


# ------------------------------------------------------------------ rebooting


def state_of(tree):
    return host_state(probe(tree))


def test_reboot_when_installed_differs_from_loaded():
    state = state_of("handwritten_tree_h100_pcie_580.82.07_loaded_proprietary")
    decision = reboot_decision(state, installed_version="580.95.05")
    assert decision == {
        "required": True,
        "reasons": ["driver 580.95.05 is installed but 580.82.07 is loaded"],
        "action": "reboot",
        "busy_units": [],
        "stop_units": [],
    }


def test_no_reboot_when_installed_is_loaded():
    state = state_of("handwritten_tree_hgx_h100_8gpu_nvswitch_580.95.05_open")
    assert reboot_decision(state, installed_version="580.95.05")["action"] == "none"
    # 580.95.5 is the same version as 580.95.05: numbers, not strings
    assert not reboot_decision(state, installed_version="580.95.5")["required"]


def test_reboot_when_nouveau_holds_the_gpu():
    state = state_of("handwritten_tree_rtx4090_nouveau_no_driver")
    decision = reboot_decision(state, installed_version="580.95.05")
    assert decision["required"]
    assert decision["reasons"] == ["nouveau is loaded", "driver 580.95.05 is installed but no nvidia module is loaded"]


def test_deferred_and_controller_reboots_stay_required():
    state = state_of("handwritten_tree_h100_pcie_580.82.07_loaded_proprietary")
    deferred = reboot_decision(state, installed_version="580.95.05", defer=True)
    assert deferred["required"] and deferred["action"] == "deferred"
    controller = reboot_decision(state, installed_version="580.95.05", defer=False, is_controller=True)
    assert controller["required"] and controller["action"] == "controller"
    # the controller wins over deferring: it is never rebooted
    assert reboot_decision(state, "580.95.05", True, True)["action"] == "controller"


def test_never_a_reboot_without_a_gpu():
    state = state_of("handwritten_tree_vm_no_gpu")
    assert reboot_decision(state, installed_version="580.95.05") == {
        "required": False,
        "reasons": [],
        "action": "none",
        "busy_units": [],
        "stop_units": [],
    }


def test_module_on_disk_is_the_installed_version_when_packages_say_nothing():
    state = dict(
        state_of("handwritten_tree_h100_pcie_580.82.07_loaded_proprietary"), module_on_disk_version="580.95.05"
    )
    assert reboot_decision(state)["required"]


def test_nothing_installed_nothing_loaded_is_no_reboot():
    state = dict(
        state_of("handwritten_tree_h100_pcie_580.82.07_loaded_proprietary"), loaded_version="", nvidia_loaded=False
    )
    assert not reboot_decision(state)["required"]


# ------------------------------------------------------------ fabric manager


# Names per branch as NVIDIA's driver container installs them (NVIDIA/gpu-driver-container
# ubuntu24.04/precompiled/nvidia-driver fabricmanager_install/nscq_install, rhel9/precompiled/Dockerfile).
@pytest.mark.parametrize(
    ("platform_name", "branch", "version", "specs"),
    [
        ("Debian-12", "580", "580.95.05-1", ["nvidia-fabricmanager=580.95.05-*", "libnvidia-nscq=580.95.05-*"]),
        ("Ubuntu-24", "590", "590.48.01-0ubuntu1", ["nvidia-fabricmanager=590.48.01-*", "libnvidia-nscq=590.48.01-*"]),
        (
            "Ubuntu-24",
            "570",
            "570.195.03-1",
            ["nvidia-fabricmanager-570=570.195.03-*", "libnvidia-nscq-570=570.195.03-*"],
        ),
        ("RedHat-9", "580", "3:580.95.05-1.el9", ["nvidia-fabricmanager-580.95.05", "libnvidia-nscq-580.95.05"]),
        (
            "RedHat-9",
            "570",
            "3:570.195.03-1.el9",
            ["nvidia-fabric-manager-570.195.03", "libnvidia-nscq-570-570.195.03"],
        ),
    ],
)
def test_fabric_manager_and_nscq_at_the_driver_version_named_per_branch(platform_name, branch, version, specs):
    state = state_of("handwritten_tree_hgx_h100_8gpu_nvswitch_580.95.05_open")
    choice = fabric_manager(state, "auto", platform(platform_name), "cuda", branch, version)
    assert choice["needed"]
    assert choice["specs"] == specs
    assert choice["version"] == upstream_version(version)  # exactly the driver's, without epoch or revision
    assert choice["service"] == "nvidia-fabricmanager"
    assert not choice["nvlink5"]


def test_nvlink5_switch_tray_found_as_nvidia_driver_container_does():
    # HGX B200: no NVSwitch PCI function; a ConnectX port whose VPD holds SW_MNG (_assert_nvlink5_system).
    state = state_of("handwritten_tree_hgx_b200_8gpu_nvlink5_580.95.05_open")
    assert state["gpu_count"] == 8 and state["nvswitch_count"] == 0
    assert state["nvlink5_present"] and state["nvlink5_devices"] == ["mlx5_0"]
    choice = fabric_manager(state, "auto", platform("Ubuntu-24"), "cuda", "580", "580.95.05-1")
    assert choice["needed"] and choice["nvlink5"]
    assert choice["specs"] == [
        "nvidia-fabricmanager=580.95.05-*",
        "libnvidia-nscq=580.95.05-*",
        "libnvsdm=580.95.05-*",
        "nvlsm",
        "infiniband-diags",
    ]
    assert choice["held"] == ["nvidia-fabricmanager", "libnvidia-nscq", "libnvsdm"]


def test_no_fabric_manager_without_nvswitch():
    state = state_of("handwritten_tree_h100_pcie_580.82.07_loaded_proprietary")
    assert not state["nvlink5_present"]
    assert not fabric_manager(state, "auto", platform("Debian-12"), "cuda", "580", "580.95.05")["needed"]
    assert fabric_manager(state, "always", platform("Debian-12"), "cuda", "580", "580.95.05")["needed"]
    hgx = state_of("handwritten_tree_hgx_h100_8gpu_nvswitch_580.95.05_open")
    assert not fabric_manager(hgx, "never", platform("Debian-12"), "cuda", "580", "580.95.05")["needed"]


def test_fabric_manager_from_a_source_without_one_is_refused():
    hgx = state_of("handwritten_tree_hgx_h100_8gpu_nvswitch_580.95.05_open")
    errors = fabric_manager_errors(hgx, "auto", platform("Debian-12"), "distribution", "535", "headless")
    assert len(errors) == 1 and "nvidia_driver_source: cuda" in errors[0]
    with pytest.raises(ValueError, match="carries no fabric manager"):
        fabric_manager(hgx, "auto", platform("Debian-12"), "distribution", "535", "535.247.01")


def test_ubuntu_archive_fabric_manager_needs_the_server_line():
    # Ubuntu's nvidia-fabricmanager-580 depends on nvidia-kernel-common-580-server-<version>.
    hgx = state_of("handwritten_tree_hgx_h100_8gpu_nvswitch_580.95.05_open")
    errors = fabric_manager_errors(hgx, "auto", platform("Ubuntu-24"), "distribution", "580", "headless")
    assert len(errors) == 1 and "nvidia_driver_flavour: server" in errors[0]
    assert fabric_manager_errors(hgx, "auto", platform("Ubuntu-24"), "distribution", "580", "server") == []
    choice = fabric_manager(
        hgx, "auto", platform("Ubuntu-24"), "distribution", "580", "580.159.03-0ubuntu0.24.04.1", "server"
    )
    assert choice["specs"] == ["nvidia-fabricmanager-580=580.159.03-*", "libnvidia-nscq-580=580.159.03-*"]


# ---------------------------------------------------------- package choices


def test_package_names_fill_in_the_branch_and_the_running_kernel():
    names = package_names(
        platform("Ubuntu-24"), "distribution", "580", "open", "precompiled", "server", ["6.8.0-1015-aws"]
    )
    # The precompiled modules of the running kernel's flavour (aws), not -generic's.
    assert names == [
        "linux-modules-nvidia-580-server-open-6.8.0-1015-aws",
        "nvidia-headless-no-dkms-580-server-open",
        "nvidia-utils-580-server",
    ]


@pytest.mark.parametrize(
    ("branch", "expected"),
    [
        ("580", ["nvidia-headless-580-open", "nvidia-utils-580"]),
        # NVIDIA driver installation guide, "Ubuntu 590 and later packages": the branch leaves the names.
        ("590", ["nvidia-headless-open", "nvidia-utils"]),
        ("595", ["nvidia-headless-open", "nvidia-utils"]),
    ],
)
def test_ubuntu_names_from_nvidias_repository_lose_the_branch_from_590(branch, expected):
    assert package_names(platform("Ubuntu-24"), "cuda", branch, "open", "dkms", "headless") == expected
    # Ubuntu's own archive keeps it (canonical/nvidia-graphics-drivers 595: nvidia-utils-595).
    assert (
        package_names(platform("Ubuntu-24"), "distribution", "580", "open", "dkms", "headless")[1] == "nvidia-utils-580"
    )


def test_versions_of_branch_less_names_are_carried_too():
    madison = (
        "nvidia-headless-open | 590.48.01-0ubuntu1 | file:/m ubuntu2404/x86_64 Packages\n"
        "nvidia-headless-580-open | 580.95.05-0ubuntu1 | file:/m ubuntu2404/x86_64 Packages\n"
        "nvidia-headless-no-dkms-open | 590.48.01-0ubuntu1 | file:/m ubuntu2404/x86_64 Packages\n"
    )
    carried = carried_versions(madison, platform("Ubuntu-24"), "cuda", "open", "dkms", "headless")
    assert carried == ["580.95.05", "590.48.01"]


def test_dnf_specs_carry_the_pin_apt_uses_preferences():
    assert package_specs(["nvidia-driver-cuda"], "dnf", "580.95.05") == ["nvidia-driver-cuda-580.95.05"]
    assert package_specs(["nvidia-driver-cuda"], "apt", "580.95.05") == ["nvidia-driver-cuda"]
    assert apt_pin_version("580", "580.95.05") == "580.95.05-*"
    assert apt_pin_version("580") == "580.*"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("cuda", "58x", "", "open", "dkms", "headless"), "nvidia_driver_branch"),
        (("cuda", "580", "570.172.08", "open", "dkms", "headless"), "nvidia_driver_version 570.172.08 does not belong"),
        (("cuda", "580", "580.95", "open", "dkms", "headless"), ""),
        (("cuda", "580", "latest", "open", "dkms", "headless"), "nvidia_driver_version must be"),
        (("distribution", "580", "", "open", "dkms", "headless"), "nvidia_driver_branch 580 is not offered"),
        (("cuda", "580", "", "open", "precompiled", "headless"), "nvidia_driver_build 'precompiled'"),
        (("cuda", "580", "", "open", "dkms", "server"), "nvidia_driver_flavour 'server'"),
        (("ppa", "580", "", "open", "dkms", "headless"), "nvidia_driver_source 'ppa'"),
        (("cuda", "580", "", "closed", "dkms", "headless"), "nvidia_driver_kernel_modules 'closed'"),
    ],
)
def test_plan_errors_name_the_variable(args, named):
    errors = plan_errors(platform("Debian-12"), *args)
    if named:
        assert any(named in error for error in errors), errors
    else:
        assert errors == []


def test_package_names_refuse_what_the_platform_does_not_offer():
    with pytest.raises(ValueError, match="nvidia_driver_build"):
        package_names(platform("RedHat-9"), "cuda", "580", "open", "precompiled", "headless")


# ---------------------------------------------------- resolved package sets


CUDA_KEYRING_SOURCES = """#file /etc/apt/sources.list
deb https://debian.invalid/debian bookworm main
#file /etc/apt/sources.list.d/cuda-debian12-x86_64.list
deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] https://mirror.invalid/cuda/repos/debian12/x86_64/ /
#file /etc/apt/sources.list.d/nvidia-cuda.sources
Types: deb
URIs: https://mirror.invalid/cuda/repos/debian12/x86_64/
Suites: /
Signed-By: /etc/apt/keyrings/nvidia-cuda.asc
"""
OWN = "/etc/apt/sources.list.d/nvidia-cuda.sources"
URI = "https://mirror.invalid/cuda/repos/debian12/x86_64/"


def test_cuda_keyring_source_is_found_and_reused():
    # cuda-keyring's file, as NVIDIA/cuda-repo-management SIGNATURES.md writes it.
    plan = existing_source_plan(CUDA_KEYRING_SOURCES, URI, OWN, "reuse")
    assert plan == {
        "found": ["/etc/apt/sources.list.d/cuda-debian12-x86_64.list"],
        "reuse": True,
        "remove": [],
        "errors": [],
    }


def test_cuda_keyring_source_is_replaced_only_where_its_file_holds_nothing_else():
    plan = existing_source_plan(CUDA_KEYRING_SOURCES, URI.rstrip("/"), OWN, "replace")
    assert plan["remove"] == ["/etc/apt/sources.list.d/cuda-debian12-x86_64.list"] and not plan["reuse"]
    mixed = CUDA_KEYRING_SOURCES.replace("bookworm main", "bookworm main\ndeb [signed-by=/k.gpg] " + URI + " /")
    plan = existing_source_plan(mixed, URI, OWN, "replace")
    assert "/etc/apt/sources.list" in plan["errors"][0] and "nvidia_driver_existing_source: reuse" in plan["errors"][0]


def test_only_the_roles_own_source_is_no_conflict():
    lines = CUDA_KEYRING_SOURCES.splitlines()
    own_only = "\n".join(line for line in lines if "cuda-debian12" not in line and "signed-by=/usr" not in line)
    assert existing_source_plan(own_only, URI, OWN, "reuse")["found"] == []
    disabled = CUDA_KEYRING_SOURCES.replace("Suites: /", "Suites: /\nEnabled: no").replace(
        OWN, "/etc/apt/sources.list.d/x.sources"
    )
    assert existing_source_plan(disabled, URI, OWN)["found"] == ["/etc/apt/sources.list.d/cuda-debian12-x86_64.list"]


REPOLIST_ROCKY9 = (
    "repo id                 repo name\n"
    "appstream               Rocky Linux 9 - AppStream\n"
    "baseos                  Rocky Linux 9 - BaseOS\n"
)


def test_rhel9_dkms_from_epel_with_crb():
    plan = rhel_repo_plan(platform("RedHat-9"), "Rocky", "x86_64", REPOLIST_ROCKY9, False, "dkms")
    assert plan == {"install_epel": True, "enable": ["crb"], "tool": "dnf", "errors": []}
    plan = rhel_repo_plan(platform("RedHat-9"), "RedHat", "aarch64", "", False, "dkms")
    assert plan["enable"] == ["codeready-builder-for-rhel-9-aarch64-rpms"] and plan["tool"] == "subscription-manager"
    enabled = REPOLIST_ROCKY9 + "crb   Rocky Linux 9 - CRB\nepel  Extra Packages for Enterprise Linux 9\n"
    assert rhel_repo_plan(platform("RedHat-9"), "Rocky", "x86_64", enabled, False, "dkms")["enable"] == []
    assert not rhel_repo_plan(platform("RedHat-9"), "Rocky", "x86_64", enabled, False, "dkms")["install_epel"]


def test_rhel8_needs_epel_only_and_nothing_when_dkms_is_there():
    plan = rhel_repo_plan(platform("RedHat-8"), "Rocky", "x86_64", "", False, "dkms")
    assert plan["install_epel"] and plan["enable"] == []
    assert rhel_repo_plan(platform("RedHat-8"), "Rocky", "x86_64", "", True, "dkms")["install_epel"] is False
    assert rhel_repo_plan(platform("Debian-12"), "Debian", "x86_64", "", False, "dkms")["install_epel"] is False


def test_epel_refused_by_the_variable_fails_with_the_reason():
    plan = rhel_repo_plan(platform("RedHat-9"), "RedHat", "x86_64", "", False, "dkms", False)
    assert len(plan["errors"]) == 1
    assert "nvidia_driver_enable_epel" in plan["errors"][0] and "EPEL" in plan["errors"][0]
    assert "codeready-builder-for-rhel-9-x86_64-rpms" in plan["errors"][0]


def test_versionlock_drops_other_versions_and_adds_the_pin():
    # `dnf versionlock list` lines as the plugin writes them (NAME-EPOCH:VERSION-RELEASE.*;
    # NVIDIA driver installation guide, "Version locking", DNF 4). The exact line goes, so that
    # community.general.dnf_versionlock (raw, absent) deletes it and no lock at the pin.
    listing = "nvidia-driver-cuda-3:580.82.07-1.el9.*\nkmod-nvidia-open-dkms-3:580.95.05-1.el9.*\n"
    names = ["nvidia-driver-cuda", "kmod-nvidia-open-dkms", "nvidia-persistenced"]
    assert FilterModule().filters()["nvidia_driver_versionlock_plan"](listing, names, "580", "580.95.05") == {
        "delete": ["nvidia-driver-cuda-3:580.82.07-1.el9.*"],
        "add": ["nvidia-driver-cuda-580.95.05", "nvidia-persistenced-580.95.05"],
    }
    held = "\n".join(f"{name}-3:580.95.05-1.el9.*" for name in names)
    assert versionlock_plan(held, names, "580", "580.95.05") == {"delete": [], "add": []}
    # "nvidia-driver" is not "nvidia-driver-cuda": no lock is mistaken for another package's.
    assert versionlock_plan(listing, ["nvidia-driver"], "580", "580.95.05")["add"] == ["nvidia-driver-580.95.05"]


def test_apt_simulation_captured_from_the_molecule_mirror():
    packages = resolved_packages(fixture("captured_molecule-mirror_bookworm_apt-get-simulate.txt"))
    versions = {package["name"]: package["version"] for package in packages}
    assert versions["nvidia-kernel-open-dkms"] == "580.95.05-1"
    assert versions["nvidia-driver-cuda"] == "580.95.05-1"
    assert "dkms" in versions  # resolved from the distribution beside the mirror
    assert not any(version.startswith("590.") for version in versions.values())


def test_dnf_dry_run_rows():
    packages = resolved_packages(fixture("handwritten_rhel9_580.95.05_dnf-install-assumeno.txt"))
    versions = {package["name"]: package["version"] for package in packages}
    assert len(packages) == 10  # the kernel's headers and kernel-devel-matched beside the driver
    assert versions["kmod-nvidia-open-dkms"] == "3:580.95.05-1.el9"
    assert versions["dkms"] == "3.2.1-1.el9"


def test_installed_driver_version_from_package_facts():
    facts = {
        "nvidia-driver-cuda": [{"name": "nvidia-driver-cuda", "version": "580.95.05-1", "source": "apt"}],
        "linux-modules-nvidia-580-open-generic": [{"version": "6.8.0-88.89"}],
        "nvidia-persistenced": [{"version": "580.95.05", "release": "1.el9", "epoch": 3}],
    }
    names = ["linux-modules-nvidia-580-open-generic", "nvidia-driver-cuda", "nvidia-persistenced", "absent"]
    assert installed_driver_version(facts, names) == "580.95.05"
    assert installed_driver_version({}, names) == ""
    assert installed_package_set(facts, ["nvidia-driver-cuda", "absent"]) == [
        {"name": "nvidia-driver-cuda", "version": "580.95.05-1"}
    ]


def test_every_filter_the_role_calls_is_exported_with_the_role_prefix():
    """A filter renamed or dropped in the plugin but still called by a task or template fails
    only on a host, at the task that calls it: each name the project's YAML and templates call
    must be one the plugin exports, under the role's prefix (or the role's probe module)."""
    names = FilterModule().filters()
    assert all(name.startswith("nvidia_driver_") for name in names)
    modules = {path.stem for path in (COLLECTION / "plugins" / "modules").glob("nvidia_driver_*.py")}
    assert modules == {"nvidia_driver_probe"} and not modules & set(names)
    names = {**names, **dict.fromkeys(modules)}
    called = {}
    for folder in ("roles", "playbooks", "molecule"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".yml", ".yaml", ".j2") and path.is_file():
                for name in re.findall(r"gpu_fleet\.common\.(nvidia_driver_\w+)", path.read_text()):
                    called.setdefault(name, str(path.relative_to(ROOT)))
    assert "nvidia_driver_reboot_decision" in called  # the scan reads the role's tasks
    assert {name: where for name, where in called.items() if name not in names} == {}


@pytest.mark.parametrize(
    ("connection", "host_id", "controller_id", "expected"),
    [
        ("local", "", "", True),
        ("ansible.builtin.local", "", "", True),
        ("ssh", "4f2c0d1e9a8b4c7d8e6f5a4b3c2d1e0f", "4f2c0d1e9a8b4c7d8e6f5a4b3c2d1e0f\n", True),  # ssh to itself
        ("ssh", "4f2c0d1e9a8b4c7d8e6f5a4b3c2d1e0f", "0a1b2c3d4e5f60718293a4b5c6d7e8f9", False),
        ("ssh", "", "", False),  # unknown ids are not equal ids
        ("community.docker.docker", "", "0a1b2c3d4e5f60718293a4b5c6d7e8f9", False),
    ],
)
def test_controller_is_recognised(connection, host_id, controller_id, expected):
    assert is_controller(connection, host_id, controller_id) is expected


# ------------------------------------------------- pins in the form apt/dnf match


@pytest.mark.parametrize(
    ("pin", "valid"),
    [
        ("580.95.05", True),
        ("580.105.08", True),
        ("535.261.03", True),
        ("390.157", True),
        # apt's `Pin: version 580.95.5-*` and dnf's `name-580.95.5` compare text: no package is 580.95.5.
        ("580.95.5", False),
        ("580.095.05", False),
        ("580.95.005", False),
        ("580.95.05-1", False),
        ("580.95.05.1", False),
    ],
)
def test_pins_only_in_the_spelling_package_managers_match(pin, valid):
    assert valid_pin(pin) is valid


# ----------------------------------------------------- kernel headers (DKMS)


def test_headers_for_every_kernel_to_build_for():
    # linux-headers-<uname -r> on Debian/Ubuntu; kernel-devel-<uname -r> and kernel-headers on RHEL
    # (NVIDIA driver installation guide, "Pre-installation Actions" and the RHEL pages).
    kernels = ["6.1.0-50-amd64", "6.1.0-49-amd64"]
    assert kernel_header_packages(platform("Debian-12"), kernels, "dkms") == [
        "linux-headers-6.1.0-50-amd64",
        "linux-headers-6.1.0-49-amd64",
    ]
    assert kernel_header_packages(platform("RedHat-9"), ["5.14.0-427.13.1.el9_4.x86_64"], "dkms") == [
        "kernel-devel-5.14.0-427.13.1.el9_4.x86_64",
        "kernel-headers",
    ]
    assert kernel_header_packages(platform("Ubuntu-24"), ["6.8.0-88-generic"], "precompiled") == []


@pytest.mark.parametrize("name", ROLE_VARS["__nvidia_driver_supported"])
def test_every_platform_names_its_header_packages(name):
    assert kernel_header_packages(platform(name), ["6.1.0-50-amd64"], "dkms")


@pytest.mark.parametrize("kernel", ["", "latest", "6", "6.1.0 amd64", "../../etc"])
def test_a_kernel_that_is_no_release_is_refused(kernel):
    assert not valid_kernel(kernel)
    with pytest.raises(ValueError, match="nvidia_driver_kernels"):
        kernel_header_packages(platform("Debian-12"), [kernel], "dkms")


def test_missing_header_packages_from_the_probe():
    text = "linux-headers-6.1.0-50-amd64 present\nlinux-headers-6.18.0-test missing\n"
    assert missing_packages(text) == ["linux-headers-6.18.0-test"]


def test_modules_built_for_each_kernel():
    text = "6.1.0-50-amd64 535.261.03\n6.1.0-49-amd64 none\n6.1.0-48-amd64 535.247.01\n"
    assert unbuilt_kernels(text, "535.261.03") == [
        "6.1.0-49-amd64 (no module)",
        "6.1.0-48-amd64 (module 535.247.01)",
    ]
    assert unbuilt_kernels("6.1.0-50-amd64 535.261.03\n", "535.261.03-1") == []


# ------------------------------------------ what the configured source carries

# `apt-cache madison` rows as apt prints them for the Molecule mirror (stand-in
# packages of 570, 580 and 590) and for Debian 12's archive with contrib/non-free.
MIRROR_MADISON = """\
nvidia-driver-cuda | 590.44.01-1 | file:/srv/nvidia-mirror/debian12/x86_64  Packages
nvidia-driver-cuda | 580.95.05-1 | file:/srv/nvidia-mirror/debian12/x86_64  Packages
nvidia-driver-cuda | 580.82.07-1 | file:/srv/nvidia-mirror/debian12/x86_64  Packages
nvidia-driver-cuda | 570.172.08-1 | file:/srv/nvidia-mirror/debian12/x86_64  Packages
"""
BOOKWORM_MADISON = """\
nvidia-kernel-dkms | 535.261.03-1 | http://archive.invalid/debian bookworm/non-free amd64 Packages
nvidia-graphics-drivers | 535.261.03-1 | http://archive.invalid/debian bookworm/non-free Sources
"""


def test_versions_carried_by_nvidias_repository_oldest_first():
    carried = carried_versions(MIRROR_MADISON, platform("Debian-12"), "cuda", "open", "dkms", "headless")
    assert carried == ["570.172.08", "580.82.07", "580.95.05", "590.44.01"]


def test_versions_carried_by_debians_archive_without_source_rows():
    carried = carried_versions(
        BOOKWORM_MADISON, platform("Debian-12"), "distribution", "proprietary", "dkms", "headless"
    )
    assert carried == ["535.261.03"]


def test_ubuntu_names_carry_the_branch():
    text = (
        "nvidia-headless-580-open | 580.95.05-0ubuntu0.24.04.2 | http://archive.invalid noble-updates Packages\n"
        "nvidia-headless-570-open | 570.195.03-0ubuntu0.24.04.1 | http://archive.invalid noble-updates Packages\n"
        "nvidia-headless-580-server-open | 580.95.05-0ubuntu0.24.04.1 | http://archive.invalid noble Packages\n"
    )
    data = platform("Ubuntu-24")
    assert marker_prefix(data, "distribution", "open", "dkms", "headless") == "nvidia-headless-"
    assert carried_versions(text, data, "distribution", "open", "dkms", "headless") == ["570.195.03", "580.95.05"]
    # Precompiled sets: the marker is the driver package, not linux-modules-* (versioned like the kernel).
    assert (
        driver_marker(data, "distribution", "open", "precompiled", "headless")
        == "nvidia-headless-no-dkms-{branch}-open"
    )


def test_a_branch_the_repository_does_not_carry_is_refused_listing_what_it_carries():
    # NVIDIA's debian13 repository opened without the 580 branch (NVIDIA/cuda-repo-management issue #38).
    errors = availability_errors(["590.44.01", "590.48.01"], "580", "", "NVIDIA's repository X")
    assert errors and "nvidia_driver_branch 580 is not carried by NVIDIA's repository X" in errors[0]
    assert "branch(es) 590 (newest 590.48.01)" in errors[0]


def test_a_pin_the_repository_does_not_carry_is_refused_listing_the_branch_versions():
    carried = ["570.172.08", "580.82.07", "580.95.05"]
    errors = availability_errors(carried, "580", "580.95.04", "R")
    assert errors == [
        "nvidia_driver_version 580.95.04 is not carried by R: branch 580 there has 580.82.07, 580.95.05. "
        "Set nvidia_driver_version to one of them, or leave it empty for the newest"
    ]
    assert availability_errors(carried, "580", "580.95.05", "R") == []
    assert availability_errors(carried, "580", "", "R") == []


def test_an_empty_index_says_what_to_enable():
    hint = platform("Debian-12")["sources"]["distribution"]["missing_hint"]
    errors = availability_errors([], "535", "", "the package sources of Debian 12", hint)
    assert "carries no NVIDIA driver package" in errors[0]
    assert "contrib, non-free and non-free-firmware" in errors[0]


# ------------------------------------------------ no reboot under training jobs


def test_reboot_is_deferred_while_training_runs():
    state = state_of("handwritten_tree_h100_pcie_580.82.07_loaded_proprietary")
    decision = reboot_decision(state, "580.95.05", busy_units=["hf-train@resnet50.service"])
    assert decision["required"]
    assert decision["action"] == "busy"
    assert decision["busy_units"] == ["hf-train@resnet50.service"]
    assert decision["stop_units"] == []


def test_reboot_stops_training_only_when_asked():
    state = state_of("handwritten_tree_h100_pcie_580.82.07_loaded_proprietary")
    decision = reboot_decision(state, "580.95.05", busy_units=["hf-train@a.service"], stop_busy=True)
    assert decision["action"] == "reboot"
    assert decision["stop_units"] == ["hf-train@a.service"]
    # Deferral and the controller win over stopping anything.
    assert reboot_decision(state, "580.95.05", True, False, ["hf-train@a.service"], True)["stop_units"] == []


def test_no_reboot_needed_ignores_training():
    state = state_of("handwritten_tree_h100_pcie_580.82.07_loaded_proprietary")
    decision = reboot_decision(state, "580.82.07", busy_units=["hf-train@a.service"])
    assert decision["action"] == "none"


def test_active_units_from_systemctl():
    text = (
        "hf-train@resnet50.service loaded active running hf-train resnet50\n"
        "hf-train@vit.service      loaded activating start hf-train vit\n"
    )
    assert parse_units(text) == ["hf-train@resnet50.service", "hf-train@vit.service"]
    assert parse_units("") == []


# ------------------------------------------------------- kernel module type


def gpus(*device_ids):
    return {"gpu_present": True, "gpu_device_ids": list(device_ids)}


@pytest.mark.parametrize(
    ("device_ids", "modules", "branch", "named"),
    [
        (["0x1db1"], "open", "580", "open cannot drive GPU(s) 0x1db1"),  # V100 SXM2 (Volta)
        (["0x15f8"], "open", "535", "open cannot drive GPU(s) 0x15f8"),  # P100 (Pascal)
        (["0x1db1"], "proprietary", "590", "nvidia_driver_branch 590 does not support GPU(s) 0x1db1"),
        (["0x2901"], "proprietary", "580", "proprietary cannot drive GPU(s) 0x2901"),  # B200 (Blackwell)
    ],
)
def test_a_module_type_or_branch_the_gpus_cannot_run_is_refused(device_ids, modules, branch, named):
    errors = module_type_errors(gpus(*device_ids), modules, branch)
    assert any(named in error for error in errors), errors


@pytest.mark.parametrize(
    ("device_ids", "modules", "branch"),
    [
        (["0x1e02"], "open", "580"),  # TITAN RTX, the first Turing id of the open modules' list
        (["0x2335"], "open", "590"),  # H200
        (["0x1db1"], "proprietary", "580"),  # V100 on the last branch for Volta
        (["0x2684"], "proprietary", "580"),  # RTX 4090 (Ada) still has proprietary modules
    ],
)
def test_module_types_the_gpus_can_run_pass(device_ids, modules, branch):
    assert module_type_errors(gpus(*device_ids), modules, branch) == []


def test_handwritten_trees_pass_with_their_module_types():
    assert module_type_errors(state_of("handwritten_tree_hgx_h100_8gpu_nvswitch_580.95.05_open"), "open", "580") == []
    assert module_type_errors(state_of("handwritten_tree_rtx4090_nouveau_no_driver"), "open", "580") == []


# -------------------------------------------------------------- Secure Boot


def test_secure_boot_from_the_efi_variable():
    on = host_state("#pci\n0000:ca:00.0 0x10de 0x2335 0x030200\n#secure_boot\n   1\n")
    off = host_state("#pci\n0000:ca:00.0 0x10de 0x2335 0x030200\n#secure_boot\n   0\n")
    assert on["secure_boot"] and not off["secure_boot"]
    assert not state_of("handwritten_tree_h100_pcie_580.82.07_loaded_proprietary")[
        "secure_boot"
    ]  # no efivars: BIOS boot


def test_unsigned_dkms_modules_under_secure_boot_are_refused_with_the_fix():
    state = {"gpu_present": True, "secure_boot": True}
    errors = secure_boot_errors(state, "dkms")
    assert errors and "mokutil --import /var/lib/dkms/mok.pub" in errors[0]
    assert "nvidia_driver_secure_boot_key_enrolled" in errors[0]
    assert secure_boot_errors(state, "dkms", key_enrolled=True) == []
    assert secure_boot_errors(state, "precompiled") == []  # signed by the distribution
    assert secure_boot_errors({"secure_boot": False}, "dkms") == []


# ------------------------------------------- issue 29: boot kernel, deferred install, branch-only


def comment_free(name: str) -> str:
    return "\n".join(line for line in fixture(name).splitlines() if not line.startswith("# "))


TWO_KERNELS = "captured_debian12_two-kernels_host-packages-probe.txt"


def test_the_boot_kernel_is_the_newest_image_and_its_metapackage_brings_its_headers():
    """Item 1: GRUB boots the newest /boot/vmlinuz-* (GRUB_DEFAULT unset); the kernel metapackage's
    headers twin is installed so that later kernels come with headers."""
    probe_text = comment_free(TWO_KERNELS)
    boot = boot_kernel(probe_text)
    assert boot == {"kernel": "6.1.0-57-cloud-amd64", "known": True, "how": "newest /boot/vmlinuz-* (GRUB_DEFAULT=0)"}
    images = parse_probe(probe_text)["image_packages"].split()
    assert kernel_header_metapackages(platform("Debian-12"), images, "dkms") == ["linux-headers-cloud-amd64"]
    assert kernel_header_metapackages(platform("Debian-12"), images, "precompiled") == []
    assert kernel_header_metapackages(platform("RedHat-9"), ["linux-image-amd64"], "dkms") == []


def test_the_boot_kernel_follows_version_order_not_text_order():
    probe_text = "#grubby\n#grub_default\n#images\n6.1.0-9-amd64\n6.1.0-10-amd64\n6.12.118+deb12-amd64\n"
    assert boot_kernel(probe_text)["kernel"] == "6.12.118+deb12-amd64"
    probe_text = "#grubby\n#grub_default\n#images\n6.1.0-9-amd64\n6.1.0-10-amd64\n"
    assert boot_kernel(probe_text)["kernel"] == "6.1.0-10-amd64"


def test_the_boot_kernel_on_el_is_grubbys_default_and_an_unfollowed_grub_default_is_asked_for():
    grubby = (
        "#grubby\n/boot/vmlinuz-5.14.0-427.13.1.el9_4.x86_64\n#grub_default\n#images\n5.14.0-503.11.1.el9_5.x86_64\n"
    )
    assert boot_kernel(grubby)["kernel"] == "5.14.0-427.13.1.el9_4.x86_64"
    saved = comment_free(TWO_KERNELS).replace("#grub_default\n", "#grub_default\nGRUB_DEFAULT=0\nGRUB_DEFAULT=saved\n")
    boot = boot_kernel(saved)
    assert boot["known"] is False and boot["how"] == "GRUB_DEFAULT=saved"
    assert "nvidia_driver_boot_kernel" in boot_module_errors(boot, "", "535.261.03")[0]
    assert boot_kernel(saved, "6.1.0-47-cloud-amd64")["kernel"] == "6.1.0-47-cloud-amd64"
    assert boot_kernel("#grubby\n#grub_default\n#images\n") == {
        "kernel": "",
        "known": True,
        "how": "no kernel image in /boot",
    }


def test_the_reboot_is_refused_when_the_boot_kernel_has_no_module():
    """Item 1: the module probe's rows for the boot kernel ('KERNEL VERSION', 'KERNEL none')."""
    boot = boot_kernel(comment_free(TWO_KERNELS))
    errors = boot_module_errors(boot, "6.1.0-57-cloud-amd64 none\n", "535.261.03", "gpu-01")
    assert len(errors) == 1
    assert "gpu-01 would boot kernel 6.1.0-57-cloud-amd64" in errors[0] and "refused" in errors[0]
    assert boot_module_errors(boot, "6.1.0-57-cloud-amd64 535.247.01\n", "535.261.03")  # an older build is no module
    assert boot_module_errors(boot, "6.1.0-57-cloud-amd64 535.261.03\n", "535.261.03") == []
    assert boot_module_errors({"kernel": "", "known": True, "how": "no kernel image in /boot"}, "", "535.261.03") == []


def test_the_kernel_list_adds_the_boot_kernel_to_the_running_one():
    """Item 1, the role's own expression: the boot kernel beside the running kernel, once."""
    expression = ROLE_VARS["__nvidia_driver_kernel_list"]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["unique"] = lambda items: list(dict.fromkeys(items))  # Ansible's unique returns a list

    def kernels(boot, configured=()):
        rendered = env.from_string(expression).render(
            nvidia_driver_kernels=list(configured),
            ansible_facts={"kernel": "6.1.0-47-cloud-amd64"},
            __nvidia_driver_boot=boot,
        )
        return ast.literal_eval(rendered.strip())

    assert kernels({"kernel": "6.1.0-57-cloud-amd64"}) == ["6.1.0-47-cloud-amd64", "6.1.0-57-cloud-amd64"]
    assert kernels({"kernel": "6.1.0-47-cloud-amd64"}) == ["6.1.0-47-cloud-amd64"]
    assert kernels({"kernel": ""}, ["6.1.0-50-amd64"]) == ["6.1.0-50-amd64"]


DPKG_535 = "captured_debian12_535_dpkg-query_installed.txt"


def test_installed_packages_keeps_only_installed_rows():
    installed = installed_packages(comment_free(DPKG_535))
    assert installed == {
        "firmware-nvidia-gsp": "535.261.03-1",
        "libcuda1": "535.261.03-1",
        "nvidia-kernel-dkms": "535.261.03-1",
    }
    rpm = "kmod-nvidia-open-dkms | 3:580.95.05-1.el9 | installed\npackage nvidia-driver-cuda is not installed\n"
    assert installed_packages(rpm) == {"kmod-nvidia-open-dkms": "3:580.95.05-1.el9"}


def apt_install_state(plan, pin=""):
    """The state the role's apt install task asks for, from its own expression."""
    tasks = yaml.safe_load((ROLE / "tasks" / "packages.yml").read_text())
    task = next(task for task in tasks if task["name"] == "Install the driver packages (apt)")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(task["ansible.builtin.apt"]["state"]).render(
        __nvidia_driver_install_plan=plan, nvidia_driver_version=pin
    )


def test_a_branch_only_target_installs_the_newest_of_the_branch_when_the_host_runs_another():
    """Item 3: Debian's names carry no branch, so `present` kept 535 installed for a 550 target
    (Debian 13's branch). The host runs 535.261.03 (dpkg-query captured on Debian 12)."""
    installed = installed_packages(comment_free(DPKG_535))
    debian = platform("Debian-13")
    other_branch = install_plan(installed, debian, "distribution", "proprietary", "dkms", "headless", "550")
    assert other_branch["installed_version"] == "535.261.03" and not other_branch["current"]
    assert apt_install_state(other_branch) == "latest"
    same_branch = install_plan(
        installed, platform("Debian-12"), "distribution", "proprietary", "dkms", "headless", "535"
    )
    assert same_branch["current"] and apt_install_state(same_branch) == "present"  # no drift inside the branch
    pinned = install_plan(
        installed, platform("Debian-12"), "distribution", "proprietary", "dkms", "headless", "535", "535.261.03"
    )
    assert pinned["current"] and apt_install_state(pinned, "535.261.03") == "latest"
    # Ubuntu from 590: nvidia-headless-open replaces nvidia-headless-580-open; 580 installed is not current.
    ubuntu = install_plan(
        {"nvidia-headless-580-open": "580.95.05-0ubuntu1"},
        platform("Ubuntu-24"),
        "cuda",
        "open",
        "dkms",
        "headless",
        "590",
    )
    assert ubuntu["marker"] == "nvidia-headless-open" and apt_install_state(ubuntu) == "latest"


UNITS = "hf-train@imagenet.service loaded active running hf_loader training job imagenet\n"


def test_the_install_waits_while_training_runs_and_the_driver_would_change():
    """Item 2: while hf-train@ runs, a driver change is deferred (nothing changes); a host already
    at the target goes on (nothing would change); stop_busy stops the units first instead."""
    installed = installed_packages(comment_free(DPKG_535))
    units = parse_units(UNITS)
    args = (platform("Debian-13"), "distribution", "proprietary", "dkms", "headless")
    waiting = install_plan(installed, *args, "550", "", units)
    assert (
        waiting["deferred"] and waiting["blocked_by"] == ["hf-train@imagenet.service"] and waiting["stop_units"] == []
    )
    stopping = install_plan(installed, *args, "550", "", units, True)
    assert not stopping["deferred"] and stopping["stop_units"] == ["hf-train@imagenet.service"]
    current = install_plan(
        installed, platform("Debian-12"), "distribution", "proprietary", "dkms", "headless", "535", "", units
    )
    assert not current["deferred"] and current["stop_units"] == []
    idle = install_plan(installed, *args, "550")
    assert not idle["deferred"]


def test_a_deferred_install_changes_no_source_package_modprobe_file_or_service():
    """Item 2: every changing step of gpu.yml is conditioned on the deferral; verification too."""
    steps = {task["name"]: task for task in yaml.safe_load((ROLE / "tasks" / "gpu.yml").read_text())}
    for name in [
        "Configure the package source",
        "Resolve and install the driver packages",
        "Blacklist nouveau",
        "Install the fabric manager and enable the services",
    ]:
        assert "not __nvidia_driver_install_deferred" in steps[name]["when"], name
    assert "not __nvidia_driver_install_deferred" in ROLE_VARS["__nvidia_driver_verify_now"]
