"""The nvidia_driver_probe module (issue 32): the role's host probes as one read-only module.

Its Python runs here on fixture trees (sysfs, /proc, /boot, /etc/apt) and on command outputs
captured on real hosts, replayed by `ReplayedCommandsFixture` (a fake runner: no command runs).
The real-apt cases of the sources probe are in test_nvidia_driver_plan_checks.py; the module
on this machine's own root, read-only, is the last test here.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.boot import boot_kernel
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.hardware_probe import (
    hardware_report,
    modules_report,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.host_commands import (
    NOT_FOUND_RC,
    local_runner,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.host_packages_probe import (
    apt_sources_report,
    host_packages_report,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.installed import (
    installed_packages,
    unbuilt_kernels,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.probe import host_state, parse_probe
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.repositories import existing_source_plan
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.sources_probe import (
    RC_KEY_DOWNLOAD,
    RC_REPOSITORY_READ,
    SourcesQuery,
    sources_report,
)
from ansible_collections.gpu_fleet.common.plugins.modules import nvidia_driver_probe

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "nvidia_driver"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nvidia"
TWO_KERNELS = FIXTURES / "captured_debian12_two-kernels_host-packages-probe.txt"
DPKG_INSTALLED_535 = FIXTURES / "captured_debian12_535_dpkg-query_installed.txt"
REPO = "https://repository.example/compute/cuda/repos/debian12/x86_64/"


class ReplayedCommandsFixture:
    """A fake runner: answers each argv from `answers` (argv prefix -> (rc, stdout, stderr)), records
    every call, and answers a program it was not given as the shell did for a missing one."""

    def __init__(self, answers=None):
        self.answers = {tuple(argv): answer for argv, answer in (answers or {}).items()}
        self.calls: list[list[str]] = []

    def __call__(self, argv):
        self.calls.append(list(argv))
        for prefix, answer in sorted(self.answers.items(), key=lambda item: -len(item[0])):
            if tuple(argv[: len(prefix)]) == prefix:
                return answer
        return NOT_FOUND_RC, "", f"{argv[0]}: not found"

    def ran(self, *words) -> list[list[str]]:
        return [argv for argv in self.calls if all(word in argv for word in words)]


def uncommented(path: Path) -> str:
    return "".join(line for line in path.read_text().splitlines(keepends=True) if not line.startswith("# "))


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------ hardware


def test_hardware_on_a_fixture_tree_runs_no_command_and_reads_the_tree():
    runner = ReplayedCommandsFixture()
    state = host_state(hardware_report(runner, str(FIXTURES / "handwritten_tree_hgx_b200_8gpu_nvlink5_580.95.05_open")))
    assert runner.calls == []  # modinfo answers for this machine, never for a fixture tree
    assert state["gpu_count"] == 8 and state["nvlink5_devices"] == ["mlx5_0"]  # mlx5_1's VPD has no SW_MNG
    assert not state["nvidia_loaded"] and state["module_on_disk_version"] == ""  # the tree has no module loaded


@pytest.mark.parametrize(("efi_bytes", "expected"), [(b"\x06\x00\x00\x00\x01", True), (b"\x06\x00\x00\x00\x00", False)])
def test_secure_boot_is_the_byte_after_the_four_efi_attribute_bytes(tmp_path, efi_bytes, expected):
    variable = tmp_path / "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
    variable.parent.mkdir(parents=True)
    variable.write_bytes(efi_bytes)
    assert host_state(hardware_report(ReplayedCommandsFixture(), str(tmp_path)))["secure_boot"] is expected


def test_nvlink5_needs_sw_mng_in_the_vpd(tmp_path):
    write(tmp_path, "sys/class/infiniband/mlx5_0/device/vpd", "PN MCX75310AAS-NEAT")
    assert host_state(hardware_report(ReplayedCommandsFixture(), str(tmp_path)))["nvlink5_present"] is False
    write(tmp_path, "sys/class/infiniband/mlx5_1/device/vpd", "V3 SW_MNG")
    assert host_state(hardware_report(ReplayedCommandsFixture(), str(tmp_path)))["nvlink5_devices"] == ["mlx5_1"]


def test_on_the_host_root_the_module_on_disk_falls_back_to_debians_nvidia_current():
    runner = ReplayedCommandsFixture(
        {("modinfo", "-F", "version", "nvidia-current"): (0, "535.261.03\n", ""), ("modinfo",): (1, "", "not found")}
    )
    state = host_state(hardware_report(runner, "/"))
    assert state["module_on_disk_version"] == "535.261.03"
    assert [argv[-1] for argv in runner.ran("modinfo")] == ["nvidia", "nvidia-current"]


# ------------------------------------------------------------------- modules


def test_modules_per_kernel_with_none_where_no_module_was_built():
    runner = ReplayedCommandsFixture(
        {
            ("modinfo", "-k", "6.1.0-47-cloud-amd64", "-F", "version", "nvidia-current"): (0, "535.261.03\n", ""),
            ("modinfo",): (1, "", "modinfo: ERROR: Module nvidia not found."),
        }
    )
    report = modules_report(runner, ["6.1.0-47-cloud-amd64", "6.1.0-57-cloud-amd64"])
    assert report == "6.1.0-47-cloud-amd64 535.261.03\n6.1.0-57-cloud-amd64 none\n"
    assert unbuilt_kernels(report, "535.261.03") == ["6.1.0-57-cloud-amd64 (no module)"]


# ------------------------------------------------------------- host packages


def test_host_packages_reproduce_the_capture_from_its_tree_and_commands(tmp_path):
    """The capture's /boot and dpkg's answers replayed: the module's report has the captured sections."""
    captured = parse_probe(TWO_KERNELS.read_text())
    for kernel in captured["images"].split():
        write(tmp_path, f"boot/vmlinuz-{kernel}", "")
    image_rows = "".join(f"{name} installed\n" for name in captured["image_packages"].split())
    runner = ReplayedCommandsFixture(
        {
            ("dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n"): (
                0,
                image_rows + "linux-image-6.1.0-9 config-files\n",
                "",
            ),
            ("dpkg-query", "-W", "-f=${Package} | ${Version} | ${db:Status-Status}\n"): (
                0,
                captured["installed"] + "\n",
                "",
            ),
        }
    )
    report = host_packages_report(runner, "apt", ["linux-image-cloud-amd64", "nvidia-kernel-dkms"], str(tmp_path))
    assert parse_probe(report) == captured  # the config-files row is no installed image
    assert boot_kernel(report) == boot_kernel(TWO_KERNELS.read_text())
    assert runner.ran("grubby") and runner.ran("linux-image-*")


def test_host_packages_read_grub_default_and_the_installed_versions(tmp_path):
    write(tmp_path, "etc/default/grub", 'GRUB_TIMEOUT=5\n  GRUB_DEFAULT="1>2"\n#GRUB_DEFAULT=0\n')
    write(tmp_path, "etc/default/grub.d/50-cloud.cfg", "GRUB_DEFAULT=saved\n")
    runner = ReplayedCommandsFixture({("dpkg-query",): (0, uncommented(DPKG_INSTALLED_535), "")})
    report = host_packages_report(runner, "apt", ["nvidia-kernel-dkms", "nvidia-smi"], str(tmp_path))
    sections = parse_probe(report)
    assert sections["grub_default"] == '  GRUB_DEFAULT="1>2"\nGRUB_DEFAULT=saved'
    assert installed_packages(sections["installed"])["nvidia-kernel-dkms"] == "535.261.03-1"
    assert "nvidia-smi" not in installed_packages(sections["installed"])  # removed: not-installed


def test_host_packages_on_el_ask_grubby_and_rpm():
    runner = ReplayedCommandsFixture(
        {
            ("grubby", "--default-kernel"): (0, "/boot/vmlinuz-5.14.0-503.el9.x86_64\n", ""),
            ("rpm", "-q"): (
                1,
                "nvidia-driver | 3:580.95.05-1.el9 | installed\npackage kmod-nvidia is not installed\n",
                "",
            ),
        }
    )
    sections = parse_probe(host_packages_report(runner, "dnf", ["nvidia-driver", "kmod-nvidia"], "/nonexistent"))
    assert sections["grubby"] == "/boot/vmlinuz-5.14.0-503.el9.x86_64"
    assert installed_packages(sections["installed"]) == {"nvidia-driver": "3:580.95.05-1.el9"}
    assert not runner.ran("dpkg-query")


# --------------------------------------------------------------- apt sources


def test_apt_sources_name_each_file_by_its_host_path(tmp_path):
    write(tmp_path, "etc/apt/sources.list", "deb http://deb.example/debian bookworm main\n")
    write(
        tmp_path,
        "etc/apt/sources.list.d/cuda-debian12-x86_64.list",
        f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {REPO} /",
    )
    write(tmp_path, "etc/apt/sources.list.d/debian.sources", "Types: deb\nURIs: http://deb.example/debian\n")
    report = apt_sources_report(str(tmp_path))
    assert [line for line in report.splitlines() if line.startswith("#file ")] == [
        "#file /etc/apt/sources.list",
        "#file /etc/apt/sources.list.d/cuda-debian12-x86_64.list",
        "#file /etc/apt/sources.list.d/debian.sources",
    ]
    plan = existing_source_plan(report, REPO, "/etc/apt/sources.list.d/nvidia-cuda.sources", "replace")
    assert plan["remove"] == ["/etc/apt/sources.list.d/cuda-debian12-x86_64.list"]


# ------------------------------------------------------------------- sources


def apt_host_answers(**extra):
    return {
        ("dpkg-query", "-W", "-f=${Status}\n", "linux-headers-6.1.0-47-cloud-amd64"): (0, "install ok installed\n", ""),
        ("dpkg-query", "-W", "-f=${Status}\n", "dkms"): (0, "deinstall ok config-files\n", ""),
        ("dpkg-query",): (1, "", "no packages found"),
        ("apt-cache", "show", "dkms"): (0, "Package: dkms\n", ""),
        ("apt-cache", "show"): (100, "", "E: No packages found"),
        ("apt-cache", "pkgnames"): (0, "nvidia-kernel-dkms\nnvidia-kernel-support\n", ""),
        ("apt-cache", "madison"): (
            0,
            "nvidia-kernel-dkms | 535.261.03-1 | http://deb.example/debian bookworm/contrib amd64 Packages\n",
            "",
        ),
        **extra,
    }


def test_sources_of_the_host_headers_versions_and_a_simulation_that_writes_no_cache(tmp_path):
    write(tmp_path, "etc/apt/preferences.d/other.pref", "Package: foo\nPin: release a=stable\nPin-Priority: 100\n")
    write(tmp_path, "etc/apt/preferences.d/nvidia-driver.pref", "stale pin of an earlier run\n")
    seen = {}

    def apt_get(argv):
        prefs = Path(next(word for word in argv if word.startswith("Dir::Etc::PreferencesParts=")).split("=", 1)[1])
        seen.update({path.name: path.read_text() for path in prefs.iterdir()})
        return 0, "Inst nvidia-kernel-dkms (535.261.03-1 Debian:12/stable [amd64])\n", "W: a warning\n"

    runner = ReplayedCommandsFixture(apt_host_answers())
    query = SourcesQuery(
        family="apt",
        prefix="nvidia-kernel-",
        headers=["linux-headers-6.1.0-47-cloud-amd64", "dkms", "linux-headers-6.1.0-57-cloud-amd64"],
        simulate=["nvidia-kernel-dkms"],
        pin="Package: src:*nvidia*:any\nPin: version 535.*\nPin-Priority: 1000",
    )

    def run(argv):
        return apt_get(argv) if argv[0] == "apt-get" else runner(argv)

    found = sources_report(run, query, str(tmp_path))
    sections = parse_probe(found.report)
    assert found.rc == 0
    markers = [line for line in found.report.splitlines() if line.startswith("#")]
    assert markers == ["#headers", "#versions", "#fabric_manager", "#simulate", "#simulate_rc"]
    assert sections["headers"].splitlines() == [
        "linux-headers-6.1.0-47-cloud-amd64 present",
        "dkms present",  # config-files is not installed, but apt can install it
        "linux-headers-6.1.0-57-cloud-amd64 missing",
    ]
    assert sections["versions"].startswith("nvidia-kernel-dkms | 535.261.03-1")
    assert sections["fabric_manager"] == ""
    assert sections["simulate"] == "Inst nvidia-kernel-dkms (535.261.03-1 Debian:12/stable [amd64])\nW: a warning"
    assert sections["simulate_rc"] == "0"
    # The role's pin replaces the host's file of that name; the host's other preferences stay beside it.
    assert seen == {
        "other.pref": "Package: foo\nPin: release a=stable\nPin-Priority: 100\n",
        "nvidia-driver.pref": query.pin + "\n",
    }
    madison = runner.ran("madison")[0]
    assert madison[-2:] == ["nvidia-kernel-dkms", "nvidia-kernel-support"]


def test_the_simulation_is_told_to_write_no_cache_and_take_no_lock():
    captured = []

    def run(argv):
        captured.append(argv)
        return ReplayedCommandsFixture(apt_host_answers())(argv) if argv[0] != "apt-get" else (0, "", "")

    sources_report(run, SourcesQuery(family="apt", prefix="nvidia-", simulate=["nvidia-driver"]), "/nonexistent")
    simulation = next(argv for argv in captured if argv[0] == "apt-get")
    assert simulation[:4] == ["apt-get", "-q", "-s", "--no-install-recommends"]
    for option in ("Dir::Cache::pkgcache=", "Dir::Cache::srcpkgcache=", "Debug::NoLocking=true"):
        assert option in simulation
    assert simulation[-2:] == ["install", "nvidia-driver"]


def test_nvidias_repository_unreadable_is_rc_4_with_apts_words_and_no_key_section():
    runner = ReplayedCommandsFixture(
        {**apt_host_answers(), ("apt-get", "-q"): (100, "Err:1 ... 404  Not Found\n", "E: Failed to fetch\n")}
    )
    key = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n...\n-----END PGP PUBLIC KEY BLOCK-----"
    found = sources_report(runner, SourcesQuery(family="apt", prefix="nvidia-driver-cuda", repo_url=REPO, key=key))
    assert found.rc == RC_REPOSITORY_READ
    assert "404  Not Found" in found.stderr and "E: Failed to fetch" in found.stderr
    assert "key" not in parse_probe(found.report)
    update = runner.ran("update")[0]
    assert any(word.startswith("Dir::State::Lists=") and "nvidia-sources-probe-" in word for word in update)
    assert not any(word.startswith(("Dir::State::Lists=/var", "Dir::Etc::SourceList=/etc")) for word in update)


def test_a_key_that_cannot_be_downloaded_is_rc_3():
    runner = ReplayedCommandsFixture({**apt_host_answers(), ("/usr/lib/apt/apt-helper",): (100, "", "E: 404\n")})
    query = SourcesQuery(family="apt", prefix="nvidia-driver-cuda", repo_url=REPO, key_url=REPO + "3bf863cc.pub")
    found = sources_report(runner, query, "/nonexistent")
    assert (found.rc, found.stderr.strip()) == (RC_KEY_DOWNLOAD, "E: 404")
    assert not runner.ran("update")


def test_dnf_host_sources_list_versions_and_fabric_manager_once_and_simulate_nothing():
    rows = "nvidia-driver | 3:580.95.05-1.el9 | cuda-rhel9-x86_64\n"
    runner = ReplayedCommandsFixture({("rpm", "-q"): (0, "", ""), ("dnf",): (0, rows, "")})
    query = SourcesQuery(family="dnf", prefix="nvidia-driver", fabric_manager=["nvidia-fabric-manager"], simulate=["x"])
    found = sources_report(runner, query, "/nonexistent")
    markers = [line for line in found.report.splitlines() if line.startswith("#")]
    assert markers == ["#headers", "#versions", "#fabric_manager"]  # apt alone simulates
    assert [argv[-1] for argv in runner.ran("repoquery")] == ["nvidia-driver*", "nvidia-fabric-manager"]


def test_dnf_reads_nvidias_repository_from_a_private_cache_with_the_given_key():
    versions = "nvidia-driver | 3:580.95.05-1.el9 | nvidia-probe\n"
    runner = ReplayedCommandsFixture({("rpm", "-q"): (1, "", ""), ("dnf",): (0, versions, "")})
    key = "-----BEGIN PGP PUBLIC KEY BLOCK-----\nabc\n-----END PGP PUBLIC KEY BLOCK-----\n"
    query = SourcesQuery(family="dnf", prefix="nvidia-driver", repo_url=REPO, key=key, headers=["kernel-devel-5.14.0"])
    found = sources_report(runner, query, "/nonexistent")
    sections = parse_probe(found.report)
    assert found.rc == 0 and sections["key"] == key.strip() and sections["versions"] == versions.strip()
    assert sections["headers"] == "kernel-devel-5.14.0 present"  # dnf repoquery printed a row
    query_argv = runner.ran("--disable-modular-filtering")[0]
    assert "--disablerepo=*" in query_argv and f"--repofrompath=nvidia-probe,{REPO}" in query_argv
    assert any(word.startswith("--setopt=cachedir=") and "nvidia-sources-probe-" in word for word in query_argv)
    assert query_argv[-1] == "nvidia-driver*"


def test_no_probe_runs_a_shell():
    runner = ReplayedCommandsFixture(apt_host_answers())
    hardware_report(runner, "/")
    host_packages_report(runner, "apt", ["nvidia-driver"], "/nonexistent")
    sources_report(runner, SourcesQuery(family="apt", prefix="nvidia-", repo_url=REPO, key="k", simulate=["x"]))
    assert runner.calls and all(Path(argv[0]).name not in ("sh", "bash", "dash") for argv in runner.calls)


# -------------------------------------------------------------------- module


def test_the_modules_documentation_matches_its_argument_spec():
    documented = yaml.safe_load(nvidia_driver_probe.DOCUMENTATION)["options"]
    spec = nvidia_driver_probe.ARGUMENT_SPEC
    assert set(documented) == set(spec)
    for name, option in spec.items():
        assert documented[name]["type"] == option["type"], name
        assert documented[name].get("default") == option.get("default"), name
        assert documented[name].get("choices") == option.get("choices"), name


@pytest.mark.parametrize("concern", ["hardware", "modules", "host_packages", "apt_sources", "sources"])
def test_every_concern_reports_unchanged(concern):
    params = {name: option.get("default") for name, option in nvidia_driver_probe.ARGUMENT_SPEC.items()}
    params.update(concern=concern, root=str(FIXTURES / "handwritten_tree_vm_no_gpu"), kernels=["6.1.0-47-cloud-amd64"])
    result = nvidia_driver_probe.observe(ReplayedCommandsFixture(apt_host_answers()), params)
    assert result["changed"] is False and result["rc"] == 0 and isinstance(result["report"], str)


def test_the_role_calls_the_module_for_every_probe_and_runs_no_probe_script():
    tasks = {path.name: path.read_text() for path in (ROLE / "tasks").glob("*.yml")}
    concerns = {}
    for name, text in tasks.items():
        assert "sh, -c" not in text and "'sh', '-c'" not in text, name
        for block in text.split("gpu_fleet.common.nvidia_driver_probe:\n")[1:]:
            concerns.setdefault(block.split("concern: ", 1)[1].split()[0], []).append(name)
    assert set(concerns) == {"hardware", "modules", "host_packages", "apt_sources", "sources"}
    assert "_script" not in (ROLE / "vars" / "main.yml").read_text()


def test_every_probe_task_runs_in_check_mode_and_reports_no_change():
    for path in (ROLE / "tasks").glob("*.yml"):
        for task in yaml.safe_load(path.read_text()) or []:
            if "gpu_fleet.common.nvidia_driver_probe" in task:
                assert task.get("check_mode") is False and task.get("changed_when") is False, (path.name, task["name"])


@pytest.mark.skipif(
    shutil.which("apt-get") is None or not Path("/var/lib/apt/lists").is_dir(), reason="needs apt (a Debian host)"
)
def test_the_module_on_this_hosts_root_in_check_mode_writes_nothing_under_apt(tmp_path):
    """The module run by Ansible on this machine's '/', in check mode: apt's lists and caches stay as they were."""
    watched = [Path("/var/lib/apt/lists"), Path("/var/cache/apt"), Path("/etc/apt")]

    def snapshot():
        return {
            str(path): (path.stat().st_mtime_ns, path.stat().st_size)
            for folder in watched
            for path in [folder, *folder.rglob("*")]
            if path.exists()
        }

    before = snapshot()
    ansible = Path(sys.executable).parent / "ansible"
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"), "ANSIBLE_NOCOLOR": "1"}
    for args in (
        "concern=hardware",
        "concern=apt_sources",
        "concern=sources prefix=nvidia- headers=bash simulate=bash",
    ):
        done = subprocess.run(
            [
                str(ansible),
                "localhost",
                "--check",
                "-c",
                "local",
                "-m",
                "gpu_fleet.common.nvidia_driver_probe",
                "-a",
                args,
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=False,
        )
        assert done.returncode == 0 and '"changed": false' in done.stdout, done.stdout + done.stderr
    assert snapshot() == before
    assert local_runner(["no-such-program-here"])[0] == NOT_FOUND_RC
