"""Issue 29, medium items: what the role checks in its plan before it changes anything.

- 9: the module type the hardware and the source allow (GH200 only open; NVIDIA's
  repositories have no proprietary modules from 620 on);
- 10: the Secure Boot key that DKMS really signs with on each distribution;
- 5: what apt really installs (Ubuntu's transitional packages pull in another branch),
  read from `apt-get install --simulate` before any change, here from real apt over a
  stand-in repository and from a handwritten Ubuntu fixture whose source is cited in it;
- 6: the fabric manager, libnvidia-nscq and (NVLink 5, x86_64) libnvsdm at the driver's exact
  version, checked with the rest of the plan, and the wait for ib_umad before the fabric manager.

Each test performs the case and fails if the role would let it through.
"""

import os
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.compatibility import (
    module_type_errors,
    secure_boot_errors,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.fabric_manager import (
    fabric_manager,
    fabric_manager_availability_errors,
    fabric_manager_held_names,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.hardware_probe import hardware_report
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.package_index import (
    availability_errors,
    carried_versions,
    planned_driver_version,
    simulated_driver_version,
    simulated_install_errors,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.packages import (
    dkms_kernel_pin_packages,
    plan_errors,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.probe import host_state, parse_probe
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.signing_key import (
    key_fingerprint_errors,
    openpgp_fingerprints,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.sources_probe import (
    SourcesQuery,
    sources_report,
)

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "nvidia_driver"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nvidia"
ROLE_VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
PLATFORMS = ROLE_VARS["__nvidia_driver_supported"]


def platform(name: str) -> dict:
    return yaml.safe_load((ROLE / "vars" / f"{name}.yml").read_text())["__nvidia_driver_platform_data"]


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def no_commands_fixture(argv):
    """A runner fixture for fixture trees: the probe must run no command there (modinfo would describe this machine)."""
    raise AssertionError(f"the hardware probe ran {argv} on a fixture tree")


def real_commands(env: dict):
    """A runner over the real tools (apt-get, apt-cache, dpkg-query) with `env`: the tests that drive real apt."""

    def run(argv):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        return done.returncode, done.stdout, done.stderr

    return run


def tree_state(tree: str) -> dict:
    """The role's own probe (nvidia_driver_probe, concern hardware) on a fixture tree, as the role runs it on '/'."""
    assert (FIXTURES / tree).is_dir(), f"no fixture tree {tree}"  # else the probe sees a host without GPUs
    return host_state(hardware_report(no_commands_fixture, str(FIXTURES / tree)))


def task_text(name: str) -> str:
    return (ROLE / "tasks" / name).read_text()


# ------------------------------------------------------------ item 9: module type


@pytest.mark.parametrize("device", ["0x2342", "0x2348"])  # GH200 120GB/480GB, GH200 144G HBM3e
def test_proprietary_modules_on_grace_hopper_are_refused(device):
    state = {"gpu_present": True, "gpu_device_ids": [device]}
    errors = module_type_errors(state, "proprietary", "580")
    assert errors and device in errors[0] and "nvidia_driver_kernel_modules: open" in errors[0], errors
    assert module_type_errors(state, "open", "580") == []


def test_hopper_outside_grace_hopper_keeps_its_choice():
    # H100 SXM (0x2330) and H200 (0x2335) still have both flavours before 620.
    assert module_type_errors({"gpu_device_ids": ["0x2330", "0x2335"]}, "proprietary", "580") == []


@pytest.mark.parametrize("name", PLATFORMS)
def test_proprietary_modules_from_nvidias_repository_end_before_620(name):
    data = platform(name)
    errors = plan_errors(data, "cuda", "620", "", "proprietary", "dkms", "headless")
    assert any("nvidia_driver_kernel_modules proprietary" in error and "620" in error for error in errors), errors
    assert plan_errors(data, "cuda", "620", "", "open", "dkms", "headless") == []
    assert plan_errors(data, "cuda", "610", "", "proprietary", "dkms", "headless") == []


def test_the_distribution_archive_keeps_its_own_proprietary_branches():
    assert plan_errors(platform("Ubuntu-24"), "distribution", "580", "", "proprietary", "dkms", "server") == []


def test_preflight_and_detection_run_the_module_checks_before_any_change():
    """The 620 rule is in plan_errors (preflight, before detection); GH200 in the detection's
    module check: both run before the first task that changes the host."""
    assert "gpu_fleet.common.nvidia_driver_plan_errors(" in task_text("preflight.yml")
    assert "gpu_fleet.common.nvidia_driver_module_type_errors(" in task_text("detect.yml")


# ------------------------------------------------------ item 10: Secure Boot key


# The key DKMS signs with on each platform: Ubuntu's shim-signed MOK, elsewhere DKMS's own. A
# platform added to the role fails here, by name, until its key is written down.
SECURE_BOOT_KEYS = {
    "Ubuntu-22": "/var/lib/shim-signed/mok/MOK.der",
    "Ubuntu-24": "/var/lib/shim-signed/mok/MOK.der",
    "Debian-12": "/var/lib/dkms/mok.pub",
    "Debian-13": "/var/lib/dkms/mok.pub",
    "RedHat-8": "/var/lib/dkms/mok.pub",
    "RedHat-9": "/var/lib/dkms/mok.pub",
}


@pytest.mark.parametrize("name", PLATFORMS)
def test_secure_boot_message_names_the_key_dkms_signs_with_there(name):
    key = SECURE_BOOT_KEYS[name]
    errors = secure_boot_errors({"gpu_present": True, "secure_boot": True}, "dkms", False, platform(name))
    assert errors and f"mokutil --import {key}," in errors[0], errors
    other = {"/var/lib/shim-signed/mok/MOK.der", "/var/lib/dkms/mok.pub"} - {key}
    assert not any(path in errors[0] for path in other)


def test_detection_hands_the_platform_to_the_secure_boot_check():
    text = " ".join(task_text("detect.yml").split())
    assert (
        "nvidia_driver_secure_boot_errors(nvidia_driver_build, nvidia_driver_secure_boot_key_enrolled | bool, "
        "__nvidia_driver_platform_data)" in text
    )


# ------------------------------------------ item 5: what apt would really install

TRANSITIONAL = "handwritten_ubuntu2404_550-transitional_apt-get-simulate.txt"
BOOKWORM_SIMULATION = "captured_molecule-mirror_bookworm_apt-get-simulate.txt"


def test_a_transitional_package_that_pulls_in_another_branch_is_refused():
    errors = simulated_install_errors(fixture(TRANSITIONAL), "550")
    assert len(errors) == 1, errors
    assert "nvidia-headless-580 580.126.09-0ubuntu0.24.04.1" in errors[0]
    assert "nvidia_driver_branch 550" in errors[0]
    assert "nvidia-headless-550 550.163.01" not in errors[0]  # the named package itself is at 550


def test_the_simulation_passes_when_apt_installs_the_target():
    text = fixture(BOOKWORM_SIMULATION)
    assert simulated_install_errors(text, "580") == []
    assert simulated_install_errors(text, "580", "580.95.05") == []
    errors = simulated_install_errors(text, "580", "580.82.07")
    assert errors and "nvidia-driver-cuda 580.95.05-1" in errors[0] and "nvidia_driver_version 580.82.07" in errors[0]
    # Debian's own packages outside the driver (dkms 3.0.10, perl 5.36, cpp 4:12.2.0) are not judged.
    assert "dkms 3.0.10" not in errors[0] and "perl " not in errors[0] and "cpp " not in errors[0]


def test_a_simulation_apt_cannot_resolve_is_refused_with_aptes_reason():
    text = (
        "Reading package lists...\nSome packages could not be installed.\n"
        "The following packages have unmet dependencies:\n"
        " nvidia-headless-550 : Depends: nvidia-headless-580 but it is not going to be installed\n"
        "E: Unable to correct problems, you have held broken packages.\n"
    )
    errors = simulated_install_errors(text, "550", "", "100")
    assert errors and "rc 100" in errors[0] and "held broken packages" in errors[0]


def test_the_driver_version_apt_resolves_and_the_planned_version():
    text = fixture(BOOKWORM_SIMULATION)
    assert simulated_driver_version(text, "nvidia-driver-cuda") == "580.95.05"
    assert simulated_driver_version(text, "nvidia-driver") == ""
    carried = ["570.172.08", "580.82.07", "580.95.05", "590.44.01"]
    assert planned_driver_version(carried, "580", "580.82.07", "580.95.05") == "580.82.07"  # the pin
    assert planned_driver_version(carried, "580", "", "580.95.05", "580.82.07") == "580.82.07"  # kept
    assert planned_driver_version(carried, "580", "", "580.95.05") == "580.95.05"  # what apt installs
    assert planned_driver_version(carried, "580") == "580.95.05"  # dnf: newest of the stream
    assert planned_driver_version(carried, "535") == ""


# Stand-in stanzas for noble's archive, names, versions and the amd64 dependency taken from the
# pages cited in the handwritten fixture: nvidia-headless-550 550.163.01 depends on nvidia-headless-580.
NOBLE_580 = "580.126.09-0ubuntu0.24.04.1"


def stanza(name: str, version: str, depends: str = "", size: int = 12600) -> str:
    """One stanza of a stand-in archive's Packages index (apt's simulation reads only the index)."""
    depends_line = f"Depends: {depends}\n" if depends else ""
    return (
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n{depends_line}"
        f"Filename: pool/{name}_{version}_amd64.deb\nSize: {size}\n"
    )


NOBLE_STANDIN = "\n".join(
    [
        stanza("nvidia-headless-550", "550.163.01-0ubuntu0.24.04.2", "nvidia-headless-580", size=10800),
        stanza("nvidia-headless-580", NOBLE_580, "nvidia-dkms-580, nvidia-headless-no-dkms-580"),
        # The branch's leaf packages: no dependency of their own in the stand-in.
        *(stanza(name, NOBLE_580) for name in ("nvidia-dkms-580", "nvidia-headless-no-dkms-580", "nvidia-utils-580")),
    ]
)


def run_sources_probe(tmp_path: Path, settings: dict, packages: list[str], preferences: str) -> dict:
    """The role's own sources probe (nvidia_driver_probe, concern sources; distribution source: the
    host's apt) over a private apt state.

    APT_CONFIG points apt at `settings` (the private_apt_state fixture's: a flat file repository,
    an empty dpkg status, private lists); the probe adds `preferences`, the role's rendered pin,
    for its simulation, as on a host.
    """
    (tmp_path / "apt.conf").write_text("".join(f'{key} "{value}";\n' for key, value in settings.items()))
    env = {
        "LC_ALL": "C",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "APT_CONFIG": str(tmp_path / "apt.conf"),
    }
    subprocess.run(["apt-get", "-q", "update"], check=True, capture_output=True, env=env)
    query = SourcesQuery(
        family="apt",
        prefix="nvidia-headless-",
        simulate=packages,
        pin=preferences,
        pin_file=str(tmp_path / "host-prefs" / "nvidia-driver.pref"),
    )
    found = sources_report(real_commands(env), query)
    assert found.rc == 0, found.stderr
    return parse_probe(found.report)


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt (make test-tools installs the host tools)")
def test_real_apt_under_the_roles_pin_installs_another_branch_and_the_plan_refuses_it(
    tmp_path, private_apt_state, rendered_preferences
):
    """The attack: a 550 target whose transitional metapackage pulls in 580. The availability check
    passes (550.163.01 is carried); the role's own probe script simulates the install with real apt
    under the role's rendered 550 pin, and the plan must refuse what apt would install."""
    apt = private_apt_state(NOBLE_STANDIN)
    sections = run_sources_probe(tmp_path, apt, ["nvidia-headless-550"], rendered_preferences("550"))
    carried = carried_versions(
        sections["versions"], platform("Ubuntu-24"), "distribution", "proprietary", "dkms", "headless"
    )
    assert availability_errors(carried, "550", "", "noble") == []  # the old check lets it through
    assert sections["simulate_rc"].strip() == "0"
    assert "Inst nvidia-headless-580 (580.126.09-0ubuntu0.24.04.1" in sections["simulate"]
    errors = simulated_install_errors(sections["simulate"], "550", "", sections["simulate_rc"])
    assert errors and "nvidia-headless-580 580.126.09-0ubuntu0.24.04.1" in errors[0], sections["simulate"]


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt (make test-tools installs the host tools)")
def test_real_apt_installing_the_target_branch_passes_the_plan(tmp_path, private_apt_state, rendered_preferences):
    apt = private_apt_state(NOBLE_STANDIN)
    packages = ["nvidia-headless-580", "nvidia-utils-580"]
    sections = run_sources_probe(tmp_path, apt, packages, rendered_preferences("580"))
    assert sections["simulate_rc"].strip() == "0"
    assert simulated_install_errors(sections["simulate"], "580", "", sections["simulate_rc"]) == []
    assert simulated_driver_version(sections["simulate"], "nvidia-headless-580") == "580.126.09"


def test_the_plan_runs_the_simulation_and_refuses_before_the_first_change():
    plan = task_text("plan.yml")
    probe = plan[plan.index("gpu_fleet.common.nvidia_driver_probe:\n    concern: sources") :].split("\n- name:")[0]
    assert "\n    simulate:" in probe and "\n    pin:" in probe and "\n    fabric_manager:" in probe
    assert "gpu_fleet.common.nvidia_driver_simulated_install_errors(" in plan
    assert "gpu_fleet.common.nvidia_driver_fabric_manager_availability_errors(" in plan
    # plan.yml is included before the repository, package, modprobe and service steps.
    gpu = task_text("gpu.yml")
    assert gpu.index("file: plan.yml") < gpu.index("file: repository.yml") < gpu.index("file: packages.yml")


# ----------------------------------- item 6: fabric manager checked with the plan

HGX_H100 = "handwritten_tree_hgx_h100_8gpu_nvswitch_580.95.05_open"
HGX_B200 = "handwritten_tree_hgx_b200_8gpu_nvlink5_580.95.05_open"


@pytest.mark.parametrize(
    ("tree", "name", "branch", "arch", "held"),
    [
        (HGX_H100, "Ubuntu-24", "580", "x86_64", ["nvidia-fabricmanager", "libnvidia-nscq"]),
        (HGX_H100, "Ubuntu-24", "570", "x86_64", ["nvidia-fabricmanager-570", "libnvidia-nscq-570"]),
        (HGX_B200, "Ubuntu-24", "580", "x86_64", ["nvidia-fabricmanager", "libnvidia-nscq", "libnvsdm"]),
        (HGX_B200, "Ubuntu-24", "570", "x86_64", ["nvidia-fabricmanager-570", "libnvidia-nscq-570", "libnvsdm-570"]),
        (HGX_B200, "Ubuntu-24", "580", "aarch64", ["nvidia-fabricmanager", "libnvidia-nscq"]),  # no arm64 build
        (HGX_B200, "RedHat-9", "580", "x86_64", ["nvidia-fabricmanager", "libnvidia-nscq", "libnvsdm"]),
        (HGX_B200, "Debian-12", "580", "x86_64", ["nvidia-fabricmanager", "libnvidia-nscq", "libnvsdm"]),
    ],
)
def test_packages_held_at_the_driver_version_include_libnvsdm_on_nvlink5_x86_64(tree, name, branch, arch, held):
    state = tree_state(tree)
    assert fabric_manager_held_names(state, "auto", platform(name), "cuda", branch, "", arch) == held
    fm = fabric_manager(state, "auto", platform(name), "cuda", branch, f"{branch}.95.05", "", arch)
    assert fm["held"] == held
    assert all(spec.split("=")[0].split(f"-{branch}.95.05")[0] in fm["packages"] for spec in fm["specs"])


def test_nvlink5_waits_for_ib_umad_and_mlx5_core_and_nvswitch_hosts_do_not():
    b200 = fabric_manager(tree_state(HGX_B200), "auto", platform("Ubuntu-24"), "cuda", "580", "580.95.05")
    h100 = fabric_manager(tree_state(HGX_H100), "auto", platform("Ubuntu-24"), "cuda", "580", "580.95.05")
    assert b200["wait_modules"] == ["mlx5_core", "ib_umad"]
    assert h100["wait_modules"] == []
    reboot = task_text("reboot.yml")
    assert reboot.index('path: "/sys/module/{{ item }}"') < reboot.index(
        "Start the persistence daemon and the fabric manager"
    )


def test_no_fabric_manager_packages_are_read_where_none_is_needed():
    state = tree_state("handwritten_tree_rtx4090_nouveau_no_driver")
    assert fabric_manager_held_names(state, "auto", platform("Ubuntu-24"), "cuda", "580") == []
    # A source without a fabric manager is refused by fabric_manager_errors in the detection, not listed here.
    assert fabric_manager_held_names(tree_state(HGX_H100), "auto", platform("Debian-12"), "distribution", "535") == []


# `apt-cache madison` rows in the shape apt prints for NVIDIA's repository (handwritten: the
# versions of a repository where libnvidia-nscq of the newest driver is not published yet).
FM_MADISON = """\
nvidia-fabricmanager | 580.95.05-1 | https://repo.invalid/compute/cuda/repos/ubuntu2404/x86_64  Packages
nvidia-fabricmanager | 580.82.07-1 | https://repo.invalid/compute/cuda/repos/ubuntu2404/x86_64  Packages
libnvidia-nscq | 580.82.07-1 | https://repo.invalid/compute/cuda/repos/ubuntu2404/x86_64  Packages
libnvsdm | 580.95.05-1 | https://repo.invalid/compute/cuda/repos/ubuntu2404/x86_64  Packages
"""


def test_a_fabric_manager_set_missing_at_the_driver_version_is_refused_before_the_install():
    fm = fabric_manager(tree_state(HGX_H100), "auto", platform("Ubuntu-24"), "cuda", "580", "580.95.05")
    errors = fabric_manager_availability_errors(FM_MADISON, fm, "NVIDIA's repository")
    assert len(errors) == 1 and "libnvidia-nscq (has 580.82.07)" in errors[0], errors
    assert "nvidia-fabricmanager" not in errors[0].split("carries no")[1].split("at driver")[0]
    assert "nvidia_driver_fabric_manager: never" in errors[0]
    older = fabric_manager(tree_state(HGX_H100), "auto", platform("Ubuntu-24"), "cuda", "580", "580.82.07")
    assert fabric_manager_availability_errors(FM_MADISON, older, "NVIDIA's repository") == []


def test_libnvsdm_missing_on_nvlink5_is_refused_and_dnf_rows_are_read_too():
    b200 = fabric_manager(tree_state(HGX_B200), "auto", platform("RedHat-9"), "cuda", "580", "580.82.07")
    rows = (
        "nvidia-fabricmanager | 3:580.82.07-1.el9 | cuda-rhel9-x86_64\n"
        "libnvidia-nscq | 3:580.82.07-1.el9 | cuda-rhel9-x86_64\n"
        "libnvsdm | 3:580.95.05-1.el9 | cuda-rhel9-x86_64\n"
    )
    errors = fabric_manager_availability_errors(rows, b200, "NVIDIA's repository")
    assert errors and "libnvsdm (has 580.95.05)" in errors[0]
    rows += "libnvsdm | 3:580.82.07-1.el9 | cuda-rhel9-x86_64\n"
    assert fabric_manager_availability_errors(rows, b200, "NVIDIA's repository") == []
    none = fabric_manager(tree_state("handwritten_tree_vm_no_gpu"), "auto", platform("RedHat-9"), "cuda", "580", "")
    assert fabric_manager_availability_errors("", none, "NVIDIA's repository") == []


# ------------------------------------------- item 11: the dnf repository's id and file

# NVIDIA's own repository file, as `dnf config-manager --add-repo
# <base>/rhel9/x86_64/cuda-rhel9.repo` installs it (/etc/yum.repos.d/cuda-rhel9.repo); its
# content as vendor repository catalogues reproduce it (handwritten here, keys as published).
NVIDIA_REPO_FILE = """\
[cuda-rhel9-x86_64]
name=cuda-rhel9-x86_64
baseurl=https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64
enabled=1
gpgcheck=1
gpgkey=https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/D42D0685.pub
"""


def yum_repository_task() -> dict:
    tasks = yaml.safe_load(task_text("repository.yml"))
    block = next(task for task in tasks if task.get("name") == "Configure NVIDIA's dnf repository")["block"]
    return next(task for task in block if "ansible.builtin.yum_repository" in task)["ansible.builtin.yum_repository"]


def rendered(template: str, name: str, arch: str) -> str:
    values = {"__nvidia_driver_platform_data": platform(name), "__nvidia_driver_repo_arch": arch}
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(values)


@pytest.mark.parametrize("name", ["RedHat-8", "RedHat-9"])
def test_the_roles_repository_id_lives_in_nvidias_file_not_in_a_second_one(tmp_path, name):
    """dnf refuses an id that two .repo files define ("listed more than once"). A host that followed
    NVIDIA's instructions has cuda-rhel9.repo with [cuda-rhel9-x86_64]; the role's section must land
    in that same file (yum_repository `file`, default: the id), so the folder defines each id once."""
    task = yum_repository_task()
    repo_id = rendered(task["name"], name, "x86_64")
    file_name = rendered(task.get("file", task["name"]), name, "x86_64") + ".repo"
    dist = platform(name)["repo_dist"]
    nvidia_file = f"cuda-{dist}.repo"
    (tmp_path / nvidia_file).write_text(NVIDIA_REPO_FILE.replace("rhel9", dist))
    role_file = tmp_path / file_name
    existing = role_file.read_text() if role_file.exists() else ""
    if f"[{repo_id}]" not in existing:  # yum_repository edits the section in place, else appends it
        role_file.write_text(existing + f"[{repo_id}]\nname=NVIDIA CUDA repository\n")
    defined = {}
    for path in sorted(tmp_path.glob("*.repo")):
        for line in path.read_text().splitlines():
            if line.startswith("[") and line.endswith("]"):
                defined.setdefault(line[1:-1], []).append(path.name)
    assert defined == {repo_id: [nvidia_file]}, f"dnf would see these ids in several files: {defined}"


def test_the_repository_file_of_earlier_role_versions_is_removed_before_the_new_one():
    text = task_text("repository.yml")
    removed = text.index('path: "/etc/yum.repos.d/cuda-{{ __nvidia_driver_platform_data.repo_dist }}-')
    assert removed < text.index("ansible.builtin.yum_repository:")


# ---------------------------------- item 8: dkms must not pull in a newer kernel on EL9

RUNNING_EL9 = "5.14.0-427.13.1.el9_4.x86_64"


def test_el9_installs_kernel_devel_matched_at_the_running_kernel_before_dkms():
    """dkms requires (kernel-devel-matched if kernel-core) on EL9; unpinned, dnf takes the newest,
    with a newer kernel that the next boot starts."""
    assert dkms_kernel_pin_packages(platform("RedHat-9"), RUNNING_EL9, "dkms") == [
        f"kernel-devel-matched-{RUNNING_EL9}"
    ]
    assert dkms_kernel_pin_packages(platform("RedHat-9"), RUNNING_EL9, "precompiled") == []
    for name in ("RedHat-8", "Debian-12", "Ubuntu-24"):  # no kernel-devel-matched there
        assert dkms_kernel_pin_packages(platform(name), "6.1.0-50-amd64", "dkms") == []
    with pytest.raises(ValueError, match="not a kernel release"):
        dkms_kernel_pin_packages(platform("RedHat-9"), "latest", "dkms")


def test_the_pin_is_among_the_header_packages_installed_and_probed_before_the_driver():
    text = " ".join(ROLE_VARS["__nvidia_driver_header_packages"].split())
    assert "nvidia_driver_dkms_kernel_pin_packages(ansible_facts['kernel']" in text
    packages = task_text("packages.yml")
    headers = packages.index("Install the kernel headers DKMS builds against (dnf)")
    assert headers < packages.index("Install and hold the driver packages at the target (dnf versionlock)")


# -------------- items 5 and 6 through NVIDIA's repository path of the probe, with real apt and gpg


def build_signed_mirror(root: Path) -> tuple[str, str]:
    """A flat apt repository laid out like NVIDIA's (BASE/debian12/x86_64/), signed with a key made
    here: stand-in packages of 580.82.07, 580.95.05 and 590.44.01 with the driver's own dependency
    edges (as molecule/nvidia_driver/files/mirror-packages.tsv has them), a fabric manager in each,
    and libnvidia-nscq published only at 580.82.07. Returns (base URL, armored key)."""
    repo = root / "mirror" / "debian12" / "x86_64"
    repo.mkdir(parents=True)
    gnupg = root / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(gnupg)}

    stanzas = []

    def package(name, version, depends=""):
        # apt's simulation reads only the index: no .deb is built.
        stanza = f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
        stanza += f"Depends: {depends}\n" if depends else ""
        stanzas.append(stanza + f"Filename: ./{name}_{version}_amd64.deb\nSize: 1000\nDescription: stand-in\n")

    for version in ("580.82.07-1", "580.95.05-1", "590.44.01-1"):
        for name in ("nvidia-smi", "libcuda1", "nvidia-kernel-support", "nvidia-persistenced", "nvidia-fabricmanager"):
            package(name, version)
        package("nvidia-driver-cuda", version, f"nvidia-smi (= {version}), libcuda1 (= {version})")
        package("nvidia-kernel-open-dkms", version, f"nvidia-kernel-support (= {version})")
    package("libnvidia-nscq", "580.82.07-1")
    (repo / "Packages").write_text("\n".join(stanzas))
    digest = subprocess.run(["sha256sum", "Packages"], cwd=repo, check=True, capture_output=True, text=True)
    size = (repo / "Packages").stat().st_size
    (repo / "Release").write_text(f"Origin: test\nSHA256:\n {digest.stdout.split()[0]} {size} Packages\n")
    gpg = ["gpg", "--batch", "--quiet", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "mirror <m@t.invalid>", "ed25519", "sign", "never"], env=env, check=True)
    subprocess.run(
        [*gpg, "--yes", "--clearsign", "-o", str(repo / "InRelease"), str(repo / "Release")], env=env, check=True
    )
    key = subprocess.run([*gpg, "--armor", "--export"], env=env, check=True, capture_output=True, text=True).stdout
    return f"file://{repo}/", key


def probe_nvidia_repository(base, key, preferences, fabric_manager) -> dict:
    env = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    query = SourcesQuery(
        family="apt",
        prefix="nvidia-driver-cuda",
        repo_url=base,
        key=key,
        fabric_manager=list(fabric_manager),
        simulate=["nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-persistenced"],
        pin=preferences,
        pin_file="/etc/apt/preferences.d/nvidia-driver.pref",
    )
    found = sources_report(real_commands(env), query)
    assert found.rc == 0, found.stderr
    return parse_probe(found.report)


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("apt-get", "gpg")),
    reason="needs apt and gpg (make test-tools installs the host tools)",
)
def test_nvidias_repository_path_resolves_the_pin_and_refuses_a_fabric_manager_set_it_lacks(
    tmp_path, rendered_preferences
):
    """The role's probe reads NVIDIA's (stand-in, signed) repository into a private apt state, then
    simulates the install there beside the host's own sources, under the role's rendered pin: the
    exact pin 580.82.07 is what apt installs (not the newer 580.95.05 or 590), and the branch-only
    target resolves 580.95.05, whose libnvidia-nscq the repository lacks: refused before any change."""
    base, key = build_signed_mirror(tmp_path)
    debian = platform("Debian-12")
    hgx = tree_state(HGX_H100)
    held = fabric_manager_held_names(hgx, "auto", debian, "cuda", "580")
    assert held == ["nvidia-fabricmanager", "libnvidia-nscq"]

    pinned = probe_nvidia_repository(base, key, rendered_preferences("580", "580.82.07"), held)
    assert pinned["simulate_rc"].strip() == "0", pinned["simulate"]
    assert simulated_install_errors(pinned["simulate"], "580", "580.82.07", pinned["simulate_rc"]) == []
    version = simulated_driver_version(pinned["simulate"], "nvidia-driver-cuda")
    assert version == "580.82.07"
    fm = fabric_manager(hgx, "auto", debian, "cuda", "580", version)
    assert fabric_manager_availability_errors(pinned["fabric_manager"], fm, "the mirror") == []

    # Item 11: the key the probe used comes back with it, and its fingerprint is what gpg says.
    assert openpgp_fingerprints(pinned["key"]) == openpgp_fingerprints(key)
    assert key_fingerprint_errors(pinned["key"], ["EB693B3035CD5710E231E123A4B469963BF863CC"], "the mirror")

    branch = probe_nvidia_repository(base, key, rendered_preferences("580"), held)
    carried = carried_versions(branch["versions"], debian, "cuda", "open", "dkms", "headless")
    simulated = simulated_driver_version(branch["simulate"], "nvidia-driver-cuda")
    version = planned_driver_version(carried, "580", "", simulated)
    assert version == "580.95.05"
    fm = fabric_manager(hgx, "auto", debian, "cuda", "580", version)
    errors = fabric_manager_availability_errors(branch["fabric_manager"], fm, "the mirror")
    assert errors and "libnvidia-nscq (has 580.82.07)" in errors[0]


# ------------------------------------------------ item 11: the repository key's fingerprint


@pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gpg (make test-tools installs the host tools)")
def test_a_key_that_is_not_the_repositorys_is_refused_by_its_fingerprint(tmp_path):
    """A key made here (primary and subkey) is read as gpg reads it; the role refuses it against
    NVIDIA's published fingerprint and accepts it by its own fingerprint or key id."""
    env = {**os.environ, "GNUPGHOME": str(tmp_path)}
    tmp_path.chmod(0o700)
    gpg = ["gpg", "--batch", "--quiet", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "other <o@t.invalid>", "ed25519", "sign", "never"], env=env, check=True)
    listed = subprocess.run(
        [*gpg, "--with-colons", "--fingerprint"], env=env, check=True, capture_output=True, text=True
    )
    primary = next(line.split(":")[9] for line in listed.stdout.splitlines() if line.startswith("fpr:"))
    subprocess.run([*gpg, "--quick-add-key", primary, "ed25519", "sign", "never"], env=env, check=True)
    armored = subprocess.run([*gpg, "--armor", "--export"], env=env, check=True, capture_output=True, text=True).stdout
    colons = subprocess.run(
        [*gpg, "--with-colons", "--fingerprint", "--fingerprint"], env=env, check=True, capture_output=True, text=True
    ).stdout
    expected = [line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:")]
    assert len(expected) == 2 and openpgp_fingerprints(armored) == expected
    nvidia = platform("Ubuntu-24")["repo_key_fingerprints"]
    errors = key_fingerprint_errors(armored, nvidia, "NVIDIA's repository")
    assert errors and expected[0] in errors[0] and "nvidia_driver_repo_key_fingerprints" in errors[0]
    assert key_fingerprint_errors(armored, [expected[0]], "x") == []
    assert key_fingerprint_errors(armored, [expected[1][-16:].lower()], "x") == []  # the subkey's key id
    spaced = " ".join(expected[0][i : i + 4] for i in range(0, 40, 4))
    assert key_fingerprint_errors(armored, [spaced], "x") == []
    assert key_fingerprint_errors(armored, [], "x") == []
    assert "cannot be read" in key_fingerprint_errors("not a key", nvidia, "x")[0]


@pytest.mark.parametrize("name", PLATFORMS)
def test_every_platform_names_nvidias_key_for_a_downloaded_key(name):
    data = platform(name)
    assert data["repo_key_fingerprints"]
    assert data["repo_key_name"].split(".")[0].upper() == data["repo_key_fingerprints"][0][-8:]


def test_the_key_check_runs_in_the_plan_on_the_key_given_or_downloaded():
    plan = " ".join(task_text("plan.yml").split())
    assert "gpu_fleet.common.nvidia_driver_key_fingerprint_errors(__nvidia_driver_key_fingerprints" in plan
    rule = " ".join(ROLE_VARS["__nvidia_driver_key_fingerprints"].split())
    assert rule.startswith("{{ nvidia_driver_repo_key_fingerprints if nvidia_driver_repo_key_fingerprints | length > 0")
    assert "__nvidia_driver_key_content | length == 0 and nvidia_driver_repo_key_url | length == 0" in rule


# ------------------------------------------------------ item 11: Debian's contrib component

# Stand-in for NVIDIA's Debian packages with the dependency edges Debian's own packaging gives them
# (Debian 12 archive, apt-cache show: nvidia-kernel-support Depends nvidia-kernel-common, Section
# contrib/kernel; libcuda1 Depends nvidia-support, contrib/misc); a host without contrib lacks both.
DEBIAN_DRIVER = "580.95.05-1"
DEBIAN_WITHOUT_CONTRIB = "\n".join(
    [
        stanza("nvidia-driver-cuda", DEBIAN_DRIVER, f"libcuda1 (= {DEBIAN_DRIVER}), nvidia-kernel-support"),
        stanza("libcuda1", DEBIAN_DRIVER, "nvidia-support"),
        stanza("nvidia-kernel-support", DEBIAN_DRIVER, "nvidia-kernel-common (>= 20151021)"),
    ]
)
DEBIAN_WITH_CONTRIB = "\n".join(
    [
        DEBIAN_WITHOUT_CONTRIB,
        stanza("nvidia-kernel-common", "20220217+3~deb12u1"),
        stanza("nvidia-support", "20220217+3~deb12u1"),
    ]
)


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt (make test-tools installs the host tools)")
def test_a_debian_host_without_contrib_is_refused_naming_contrib(tmp_path, private_apt_state, rendered_preferences):
    """NVIDIA's Debian packages need Debian's contrib (NVIDIA's Debian instructions enable it); the
    role leaves the host's sources alone, so real apt's failed simulation must name the remedy."""
    hint = platform("Debian-12")["sources"]["cuda"]["unmet_hint"]
    assert hint == platform("Debian-13")["sources"]["cuda"]["unmet_hint"]
    apt = private_apt_state(DEBIAN_WITHOUT_CONTRIB)
    sections = run_sources_probe(tmp_path, apt, ["nvidia-driver-cuda"], rendered_preferences("580"))
    assert sections["simulate_rc"].strip() == "100", sections["simulate"]
    errors = simulated_install_errors(sections["simulate"], "580", "", sections["simulate_rc"], unmet_hint=hint)
    assert len(errors) == 1 and "contrib" in errors[0] and "apt-get update" in errors[0]
    assert "nvidia-kernel-common" in errors[0] or "nvidia-support" in errors[0]
    # Where apt names none of contrib's packages, the message stays apt's own.
    assert (
        "contrib"
        not in simulated_install_errors("E: Unable to locate package x\n", "580", "", "100", unmet_hint=hint)[0]
    )


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt (make test-tools installs the host tools)")
def test_a_debian_host_with_contrib_passes(tmp_path, private_apt_state, rendered_preferences):
    apt = private_apt_state(DEBIAN_WITH_CONTRIB)
    sections = run_sources_probe(tmp_path, apt, ["nvidia-driver-cuda"], rendered_preferences("580"))
    hint = platform("Debian-12")["sources"]["cuda"]["unmet_hint"]
    assert simulated_install_errors(sections["simulate"], "580", "", sections["simulate_rc"], unmet_hint=hint) == []


def test_the_plan_hands_the_platforms_contrib_remedy_to_the_simulation_check():
    assert "unmet_hint=__nvidia_driver_platform_data.sources[nvidia_driver_source].unmet_hint" in " ".join(
        task_text("plan.yml").split()
    )
