"""The lab's simulated GPUs and driver (scripts/gpu_sim): the pure parts, checked against the role.

The module file, the apt indexes and the stand-in nvidia-smi are read back the way the
real consumers read them: readelf (where installed) and a small ELF reader; apt's hash
fields recomputed; nvidia-smi's CSV and /proc/driver/nvidia/version parsed by the
nvidia_driver role's own parsers (module_utils/nvidia_driver), and the simulated sysfs tree read by the role's own
probe script. The build itself (dpkg-deb, gpg) runs where those tools are installed.
"""

import gzip
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.compatibility import module_type_errors
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.hardware_probe import hardware_report
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.nvidia_smi import (
    parse_nvidia_smi_csv,
    verify,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.packages import package_names
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.probe import host_state, parse_proc_version
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import valid_pin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "scripts" / "gpu_sim" / "payload"))

import lab_boot  # noqa: E402
import lab_train  # noqa: E402
import nvidia_smi  # noqa: E402

from gpu_sim import aptrepo, build, elf  # noqa: E402

ROLE = ROOT / "roles" / "nvidia_driver"
ROLE_VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
SMI_FIELDS = ROLE_VARS["__nvidia_driver_smi_fields"]
DEBIAN_12 = yaml.safe_load((ROLE / "vars" / "Debian-12.yml").read_text())["__nvidia_driver_platform_data"]
MIRROR_TABLE = ROOT / "molecule" / "nvidia_driver" / "files" / "mirror-packages.tsv"
FIELDS = [("version", "580.95.05"), ("license", "NVIDIA"), ("name", "nvidia")]


# ------------------------------------------------------------------ the module file


def test_module_is_an_elf64_relocatable_with_the_modinfo_fields():
    data = elf.module(FIELDS)
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1  # ELF64, little-endian
    assert int.from_bytes(data[16:18], "little") == 1  # ET_REL
    assert int.from_bytes(data[18:20], "little") == 62  # EM_X86_64
    found = elf.sections(data)
    assert found[".modinfo"] == b"version=580.95.05\0license=NVIDIA\0name=nvidia\0"
    assert set(found) == {".modinfo", ".symtab", ".strtab", ".shstrtab"}
    assert elf.modinfo(data) == dict(FIELDS)


@pytest.mark.skipif(not shutil.which("readelf"), reason="readelf (binutils) is not installed")
def test_readelf_reads_the_module(tmp_path):
    path = tmp_path / "nvidia.ko"
    path.write_bytes(elf.module(FIELDS))
    header = subprocess.run(["readelf", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Type:\s+REL", header) and "X86-64" in header
    strings = subprocess.run(["readelf", "-p", ".modinfo", str(path)], capture_output=True, text=True, check=True)
    assert re.findall(r"\]\s+(\S+)", strings.stdout) == ["version=580.95.05", "license=NVIDIA", "name=nvidia"]
    assert "Warning" not in strings.stderr


def test_modinfo_fields_refuse_what_the_section_cannot_hold():
    for bad in [("", "x"), ("a=b", "x"), ("version", "5\0")]:
        with pytest.raises(ValueError):
            elf.modinfo_section([bad])


# ------------------------------------------------------------------ apt indexes


CONTROL = {
    "Package": "nvidia-smi",
    "Version": "580.95.05-1",
    "Architecture": "amd64",
    "Maintainer": "gpu-fleet lab <lab@gpu-fleet.invalid>",
    "Depends": "libcuda1 (= 580.95.05-1)",
    "Description": "NVIDIA System Management Interface (lab gpu-sim stand-in)\nBuilt by scripts/gpu_sim/build.py.",
}


def test_packages_stanza_carries_the_control_fields_filename_size_and_hashes():
    data = b"not really a deb"
    stanza = aptrepo.packages_stanza(CONTROL, "./nvidia-smi_580.95.05-1_amd64.deb", data)
    fields = aptrepo.parse_control(stanza)
    for key in ("Package", "Version", "Architecture", "Depends"):
        assert fields[key] == CONTROL[key]
    assert fields["Filename"] == "./nvidia-smi_580.95.05-1_amd64.deb"
    assert fields["Size"] == str(len(data))
    assert fields["MD5sum"] == hashlib.md5(data).hexdigest()
    assert fields["SHA256"] == hashlib.sha256(data).hexdigest()
    assert fields["SHA512"] == hashlib.sha512(data).hexdigest()
    # Package first, Description last with its continuation line indented.
    lines = stanza.splitlines()
    assert lines[0] == "Package: nvidia-smi"
    assert lines[-2:] == [
        "Description: NVIDIA System Management Interface (lab gpu-sim stand-in)",
        " Built by scripts/gpu_sim/build.py.",
    ]


def test_release_lists_every_index_with_size_and_each_hash():
    indexes = {"Packages": b"Package: a\n", "Packages.gz": gzip.compress(b"Package: a\n")}
    text = aptrepo.release_text(indexes, {"Origin": "gpu-fleet lab", "Architectures": "amd64"}, date=0)
    assert text.startswith("Origin: gpu-fleet lab\nArchitectures: amd64\nDate: Thu, 01 Jan 1970 00:00:00 GMT\n")
    sections = re.split(r"^(MD5Sum|SHA1|SHA256|SHA512):$", text, flags=re.M)[1:]
    algorithms = {"MD5Sum": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
    assert sections[0::2] == list(algorithms)
    for name, body in zip(sections[0::2], sections[1::2], strict=True):
        rows = [line.split() for line in body.strip("\n").splitlines()]
        assert rows == [
            [hashlib.new(algorithms[name], data).hexdigest(), str(len(data)), index]
            for index, data in sorted(indexes.items())
        ]


# ------------------------------------------------------------------ the package set


def mirror_depends() -> dict[str, str]:
    rows = {}
    for line in MIRROR_TABLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _first, _last, depends, _source = line.split("\t")
            rows[name] = "" if depends == "-" else depends
    return rows


def test_the_simulated_repository_carries_what_the_role_installs_from_nvidia_on_debian_12():
    wanted = package_names(DEBIAN_12, "cuda", "580", "open", "dkms", "headless")
    rows = mirror_depends()
    closure, todo = set(), list(wanted)
    while todo:  # the packages apt pulls in with them
        name = todo.pop()
        closure.add(name)
        todo += [dep for dep in re.findall(r"([a-z0-9.+-]+) \(= \{v\}\)", rows[name]) if dep not in closure]
    assert set(build.PACKAGES) == closure


def test_simulated_dependencies_are_the_mirror_tables_without_dkms():
    rows = mirror_depends()
    for name, depends in build.PACKAGES.items():
        expected = ", ".join(dep for dep in rows[name].split(", ") if dep and dep != "dkms")
        assert depends == expected, name
    control = build.control("nvidia-driver-cuda", "580.82.07")
    assert control["Version"] == "580.82.07-1"
    assert (
        control["Depends"]
        == "nvidia-smi (= 580.82.07-1), libcuda1 (= 580.82.07-1), nvidia-kernel-support (= 580.82.07-1)"
    )
    assert build.control("nvidia-kernel-open-dkms", "580.82.07")["Conflicts"] == "nvidia-kernel-dkms"


def test_driver_versions_are_spelled_as_nvidia_does():
    assert build.parse_versions("580.95.05, 580.82.07") == ["580.82.07", "580.95.05"]
    assert build.parse_versions(" ".join(build.DEFAULT_VERSIONS)) == list(build.DEFAULT_VERSIONS)
    for bad in ["580.95.5", "580", "", "580.95.05-1"]:
        with pytest.raises(build.BuildError):
            build.parse_versions(bad)
    assert all(valid_pin(version) for version in build.DEFAULT_VERSIONS)


def test_the_nvidia_smi_program_knows_its_version():
    program = build.nvidia_smi_program("580.95.05").decode()
    assert 'LIBRARY_VERSION = "580.95.05"' in program
    assert 'LIBRARY_VERSION = ""' not in program


# ------------------------------------------------------------------ nvidia-smi and /proc, read by the role


def smi_lines(host="lab-gpu-01", count=2, loaded="580.95.05", fail="", persistence=True):
    gpus = lab_boot.initialised(lab_boot.gpu_records(host, count), loaded, fail)
    return nvidia_smi.query(nvidia_smi.records(gpus, loaded, persistence), SMI_FIELDS, header=False, units=False)


def test_the_roles_filter_reads_the_simulated_nvidia_smi_and_verifies_it():
    rows = parse_nvidia_smi_csv("\n".join(smi_lines()), SMI_FIELDS)
    assert [row["pci.bus_id"] for row in rows] == ["00000000:18:00.0", "00000000:2A:00.0"]
    assert {row["name"] for row in rows} == {"NVIDIA H200"}
    assert all(re.fullmatch(r"GPU-[0-9a-f-]{36}", row["uuid"]) for row in rows)
    assert {row["memory.total"] for row in rows} == {"143771"}
    assert all(re.fullmatch(r"\d{13}", row["serial"]) for row in rows)
    result = verify(rows, pin="580.95.05", branch="580", expected_count=2)
    assert result["verified"], result["problems"]


def test_the_fault_injection_fails_verification_by_the_gpu_count():
    rows = parse_nvidia_smi_csv("\n".join(smi_lines(fail="580.95.05")), SMI_FIELDS)
    result = verify(rows, pin="580.95.05", branch="580", expected_count=2)
    assert result["problems"] == ["nvidia-smi lists 1 GPU(s), nvidia_driver_expected_gpu_count is 2"]
    # Under another version every GPU comes up.
    assert len(smi_lines(loaded="580.82.07", fail="580.95.05")) == 2


def test_persistence_off_while_the_daemon_is_stopped_is_a_verification_problem():
    rows = parse_nvidia_smi_csv("\n".join(smi_lines(persistence=False)), SMI_FIELDS)
    assert verify(rows, pin="580.95.05", expected_count=2)["problems"] == ["persistence mode is off on GPU(s) 0, 1"]


def test_query_with_header_and_units_is_the_real_shape():
    lines = nvidia_smi.query(
        nvidia_smi.records(lab_boot.gpu_records("h", 1), "580.95.05", True), ["index", "memory.total"], True, True
    )
    assert lines == ["index, memory.total [MiB]", "0, 143771 MiB"]


def test_proc_version_is_read_by_the_role_as_the_open_module():
    text = lab_boot.proc_version_text("580.95.05", 0)
    parsed = parse_proc_version(text)
    assert parsed["version"] == "580.95.05"
    assert parsed["kernel_modules"] == "open"
    assert parsed["arch"] == "x86_64"
    assert parsed["gcc"].startswith("gcc version")
    assert nvidia_smi.loaded_version(text) == "580.95.05"


def no_commands_fixture(argv):
    """A runner fixture for fixture trees: the probe must run no command there (modinfo would describe this machine)."""
    raise AssertionError(f"the hardware probe ran {argv} on a fixture tree")


def test_the_roles_probe_reads_the_simulated_tree(tmp_path):
    """The role's own probe (nvidia_driver_probe, concern hardware) on a tree shaped as lab-boot makes it."""
    for gpu in lab_boot.gpu_records("lab-gpu-01", 2):
        device = tmp_path / "sys" / "bus" / "pci" / "devices" / gpu["address"]
        device.mkdir(parents=True)
        for name, value in (("vendor", "0x10de"), ("device", "0x2335"), ("class", "0x030200")):
            (device / name).write_text(value + "\n")
    (tmp_path / "proc" / "driver" / "nvidia").mkdir(parents=True)
    (tmp_path / "proc" / "driver" / "nvidia" / "version").write_text(lab_boot.proc_version_text("580.82.07", 0))
    state = host_state(hardware_report(no_commands_fixture, str(tmp_path)))
    assert state["gpu_count"] == 2 and state["gpu_device_ids"] == ["0x2335"]
    assert state["loaded_version"] == "580.82.07" and state["loaded_kernel_modules"] == "open"
    assert state["nvidia_loaded"] and not state["nouveau_loaded"]
    assert module_type_errors(state, "open", "580") == []


def run_smi(monkeypatch, tmp_path, capsys, proc_text=None, library="580.95.05", gpus=None):
    proc = tmp_path / "version"
    if proc_text is not None:
        proc.write_text(proc_text)
    gpu_file = tmp_path / "gpus"
    gpu_file.write_text(json.dumps(gpus if gpus is not None else lab_boot.gpu_records("h", 2)))
    monkeypatch.setattr(nvidia_smi, "PROC_VERSION", proc)
    monkeypatch.setattr(nvidia_smi, "GPUS", gpu_file)
    monkeypatch.setattr(nvidia_smi, "LIBRARY_VERSION", library)
    monkeypatch.setattr(nvidia_smi, "persistence_active", lambda: True)
    code = nvidia_smi.main(["--query-gpu=" + ",".join(SMI_FIELDS), "--format=csv,noheader,nounits"])
    return code, capsys.readouterr().out


def test_nvidia_smi_without_a_loaded_driver_says_what_the_real_one_says(monkeypatch, tmp_path, capsys):
    code, out = run_smi(monkeypatch, tmp_path, capsys, proc_text=None)
    assert code == 9
    assert out.strip() == (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running."
    )


def test_nvidia_smi_of_a_newer_package_before_the_reboot_is_a_version_mismatch(monkeypatch, tmp_path, capsys):
    code, out = run_smi(monkeypatch, tmp_path, capsys, proc_text=lab_boot.proc_version_text("580.82.07", 0))
    assert code == 18
    assert out.splitlines() == [
        "Failed to initialize NVML: Driver/library version mismatch",
        "NVML library version: 580.95",
    ]


def test_nvidia_smi_with_its_driver_loaded(monkeypatch, tmp_path, capsys):
    code, out = run_smi(monkeypatch, tmp_path, capsys, proc_text=lab_boot.proc_version_text("580.95.05", 0))
    assert code == 0
    rows = parse_nvidia_smi_csv(out, SMI_FIELDS)
    assert verify(rows, pin="580.95.05", expected_count=2)["verified"]


def test_nvidia_smi_refuses_an_unknown_field():
    asked = nvidia_smi.parse_args(["--query-gpu=index,bogus", "--format=csv"])
    assert asked["error"] == 'Field "bogus" is not a valid field to query.'
    assert nvidia_smi.listing(nvidia_smi.records(lab_boot.gpu_records("h", 1), "580.95.05", True))[0].startswith(
        "GPU 0: NVIDIA H200 (UUID: GPU-"
    )


# ------------------------------------------------------------------ lab-boot


def test_simulated_gpus_are_the_same_at_every_boot_and_differ_between_hosts():
    first, again, other = (lab_boot.gpu_records(host, 8) for host in ("lab-gpu-01", "lab-gpu-01", "lab-gpu-02"))
    assert first == again
    assert [gpu["uuid"] for gpu in first] != [gpu["uuid"] for gpu in other]
    assert [gpu["address"] for gpu in first][:2] == ["0000:18:00.0", "0000:2a:00.0"]
    assert len({gpu["uuid"] for gpu in first}) == 8


FSTAB = """# /etc/fstab
UUID=ce1c9d8f-c21c-4442-a188-58ac52cd8dd6 /data/hf ext4 noatime,rw,nofail,x-systemd.device-timeout=30s 0 2
LABEL=hfcache /data/other ext4 defaults 0 2
/dev/loop7 /mnt/with\\040blank ext4 noauto 0 0
server:/export /data/nfs nfs4 defaults 0 0
"""


def test_fstab_entries_and_which_devices_lab_boot_mounts():
    entries = lab_boot.fstab_entries(FSTAB)
    assert [entry["target"] for entry in entries] == ["/data/hf", "/data/other", "/mnt/with blank", "/data/nfs"]
    one = {"ce1c9d8f-c21c-4442-a188-58ac52cd8dd6": ["/dev/loop3"]}
    assert lab_boot.resolve(entries[0]["spec"], lambda uuid: one.get(uuid, [])) == ("/dev/loop3", "")
    # Never by label: every lab volume is labelled hfcache.
    device, why = lab_boot.resolve("LABEL=hfcache", lambda uuid: ["/dev/loop3"])
    assert device == "" and "label" in why
    # A UUID on two devices (a copied image) or on a device that is not a loop device: not mounted.
    assert lab_boot.resolve(entries[0]["spec"], lambda uuid: ["/dev/loop3", "/dev/loop4"])[0] == ""
    assert lab_boot.resolve(entries[0]["spec"], lambda uuid: ["/dev/vdb"])[0] == ""
    assert lab_boot.resolve("/dev/loop7", lambda uuid: [])[0] == "/dev/loop7"
    assert lab_boot.resolve("server:/export", lambda uuid: [])[0] == ""
    assert lab_boot.mounted_targets("/dev/loop3 /data/hf ext4 rw 0 0\nproc /proc proc rw 0 0\n") == {
        "/data/hf",
        "/proc",
    }


def test_the_boot_marker_changes_only_with_a_new_boot(tmp_path):
    marker = tmp_path / "lab-boot-id"
    first = lab_boot.write_boot_id(marker)
    assert lab_boot.write_boot_id(marker) == first  # lab-boot run twice in one boot
    marker.unlink()  # /run is new at the next boot
    assert lab_boot.write_boot_id(marker) != first


# ------------------------------------------------------------------ lab-train


def lines_until(proc: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    """proc's stdout lines up to the first that holds `needle`; the test fails after `timeout` s.

    A thread reads the pipe (a blocking readline has no timeout of its own) and keeps reading
    it afterwards, so the process never blocks on a full pipe.
    """
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put("")  # end of output

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            proc.kill()
            pytest.fail(f"no line with {needle!r} within {timeout} s; it printed {seen}")
        if not line:
            pytest.fail(f"it exited (rc {proc.wait()}) before a line with {needle!r}; it printed {seen}")
        seen.append(line)
        if needle in line:
            return seen


def test_lab_train_reads_and_checkpoints_on_sigterm(tmp_path):
    data, state = tmp_path / "hf", tmp_path / "state"
    (data / "datasets").mkdir(parents=True)
    (data / "datasets" / "train.arrow").write_bytes(b"x" * 10)
    env = dict(os.environ, LAB_TRAIN_DATA=str(data), STATE_DIRECTORY=str(state))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "gpu_sim" / "payload" / "lab_train.py"), "demo"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    # SIGTERM once it says it has read a file, not after a guessed delay.
    printed = lines_until(proc, "first step done", timeout=30)
    assert "reading 1 files" in printed[0] and str(data / "datasets" / "train.arrow") in printed[-1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    checkpoint = (state / "checkpoint").read_text()
    assert "instance=demo\n" in checkpoint and re.search(r"^steps=[1-9]", checkpoint, re.M)
    assert lab_train.checkpoint_text("x", 3, "f", 0).endswith("checkpointed_at=1970-01-01T00:00:00Z\n")


def test_lab_train_fails_without_a_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAB_TRAIN_DATA", str(tmp_path))
    assert lab_train.main(["demo"]) == 1
    assert "is the dataset volume mounted?" in capsys.readouterr().out


# ------------------------------------------------------------------ the health gate's stand-ins

GPU_CHECK = ROOT / "scripts" / "gpu_sim" / "payload" / "gpu_check.py"


def real_gpu_check():
    """hf_loader.gpu_check, the module the stand-in stands for (its decisions import without torch)."""
    sys.path.insert(0, str(ROOT / "files" / "hf_loader" / "src"))
    from hf_loader import gpu_check

    return gpu_check


def sim_root(tmp_path, loaded="580.95.05", gpus=2, fail=None) -> Path:
    """What lab-boot writes for a boot (driver loaded, the GPUs that initialised) and the fault file."""
    root = tmp_path / "sim"
    (root / "run" / "gpu-sim").mkdir(parents=True)
    (root / "etc" / "gpu-sim").mkdir(parents=True)
    if loaded:
        (root / "proc" / "driver" / "nvidia").mkdir(parents=True)
        (root / "proc" / "driver" / "nvidia" / "version").write_text(lab_boot.proc_version_text(loaded, 0))
    (root / "run" / "gpu-sim" / "gpus").write_text(json.dumps(lab_boot.gpu_records("lab-gpu-01", gpus)))
    if fail is not None:
        (root / "etc" / "gpu-sim" / "gpu-check-fail").write_text(fail)
    return root


def stand_in(root: Path, *args: str, library: str = "580.95.05") -> tuple[int, dict]:
    """The stand-in as the lab installs it (LIBRARY_VERSION set by the build), run as a program."""
    program = root.parent / "gpu-check"
    program.write_bytes(build.versioned_program("gpu_check.py", library))
    env = {**os.environ, "LAB_GPU_SIM_ROOT": str(root)}
    done = subprocess.run(
        [sys.executable, str(program), *args], capture_output=True, text=True, env=env, check=False, timeout=60
    )
    return done.returncode, json.loads(done.stdout)


def test_the_cuda_stand_in_prints_the_real_modules_report_shape_fields_and_fixes(tmp_path):
    real = real_gpu_check()
    code, doc = stand_in(sim_root(tmp_path), "--expect-gpus", "2", "--size", "64")
    assert code == real.ExitCode.PASSED and doc["passed"], doc
    settings = {"size": 64, "tolerance": 1e-4, "alloc_mib": 256, "expect_gpus": 2, "seed": 1}
    assert list(doc) == list(real.report(gpus=[], visible=2, expected=2, settings=settings))
    assert [tuple(gpu) for gpu in doc["gpus"]] == [real.GPU_RECORD_FIELDS] * 2
    assert [gpu["bus_id"] for gpu in doc["gpus"]] == ["00000000:18:00.0", "00000000:2A:00.0"]
    assert all(gpu["relative_error"] < 1e-12 for gpu in doc["gpus"])  # a real product, compared
    assert doc["message"] == "2 GPU(s) passed: allocate, matmul 64x64, compare with the CPU"
    sim = {}
    exec(compile(GPU_CHECK.read_text(), str(GPU_CHECK), "exec"), sim)  # its constants, not run
    for name in ("GPU_RECORD_FIELDS", "FIX_WRONG_RESULT", "FIX_MISSING_GPUS", "FIX_NO_DEVICE", "REPORT_VERSION"):
        assert sim[name] == getattr(real, name), name
    # The stand-in's EXIT_<NAME> constants are the real module's ExitCode.<NAME>.
    for name in ("PASSED", "USAGE", "NO_CUDA", "MISSING_GPUS", "GPU_FAILED"):
        assert sim[f"EXIT_{name}"] == real.ExitCode[name], name


def test_the_cuda_stand_in_fails_the_gpu_named_in_the_fault_file(tmp_path):
    real = real_gpu_check()
    code, doc = stand_in(sim_root(tmp_path, fail="1\n"), "--expect-gpus", "2")
    assert code == real.ExitCode.GPU_FAILED and not doc["passed"]
    good, bad = doc["gpus"]
    assert good["passed"] and not bad["passed"]
    assert bad["relative_error"] == pytest.approx(0.01, rel=1e-6)
    (problem,) = doc["problems"]
    assert problem["gpu"] == 1 and problem["bus_id"] == "00000000:2A:00.0"
    assert "matmul differs from the CPU's" in problem["what"] and problem["fix"] == real.FIX_WRONG_RESULT
    code, doc = stand_in(sim_root(tmp_path / "all", fail="all"), "--expect-gpus", "2")
    assert code == 5 and [p["gpu"] for p in doc["problems"]] == [0, 1]


def test_the_cuda_stand_in_without_a_driver_fewer_gpus_or_before_the_reboot(tmp_path):
    code, doc = stand_in(sim_root(tmp_path / "none", loaded=""), "--expect-gpus", "2")
    assert code == 3 and "no NVIDIA driver loaded" in doc["message"]
    # lab-boot's fault version: the last GPU did not initialise; the report's count says 2.
    code, doc = stand_in(sim_root(tmp_path / "short", gpus=1), "--expect-gpus", "2")
    assert code == 4 and doc["problems"][0]["what"] == "CUDA sees 1 GPU(s), the host has 2 (--expect-gpus)"
    # The newer package installed, the old module still loaded: CUDA refuses, as cuInit does.
    code, doc = stand_in(sim_root(tmp_path / "old", loaded="580.82.07"), "--expect-gpus", "2")
    assert code == 3 and "reboot" in doc["problems"][0]["fix"]
    code, doc = stand_in(sim_root(tmp_path / "usage"), "--size", "0")
    assert code == 2 and not doc["passed"]


def test_the_health_gate_reads_the_stand_ins_failure_naming_the_gpu(tmp_path):
    from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.cuda import cuda_problems

    root = sim_root(tmp_path, fail="0")
    program = root.parent / "gpu-check"
    program.write_bytes(build.versioned_program("gpu_check.py", "580.95.05"))
    done = subprocess.run(
        [sys.executable, str(program), "--expect-gpus", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "LAB_GPU_SIM_ROOT": str(root)},
        check=False,
    )
    problems = cuda_problems(done.stdout, done.stderr, done.returncode, ["gpu-check"], 300)
    assert [(p["check"], p["gpu"]) for p in problems] == [("cuda", 0)]
    assert problems[0]["what"].startswith("GPU 0 (NVIDIA H200, GPU-") and "00000000:18:00.0" in problems[0]["what"]


def test_libcuda1_carries_the_cuda_stand_in_at_its_own_version():
    files, _scripts = build.package_contents("libcuda1", "580.82.07")
    data, mode = files[build.GPU_CHECK_PATH]
    assert mode == 0o755 and b'LIBRARY_VERSION = "580.82.07"' in data
    assert "gpu_check.py" in build.PACKAGED  # a change to it rebuilds the repository


def smi_q(monkeypatch, tmp_path, capsys, fabric_text=None) -> tuple[int, str]:
    proc = tmp_path / "version"
    proc.write_text(lab_boot.proc_version_text("580.95.05", 0))
    gpu_file = tmp_path / "gpus"
    gpu_file.write_text(json.dumps(lab_boot.gpu_records("lab-gpu-01", 2)))
    fabric = tmp_path / "fabric-state"
    if fabric_text is not None:
        fabric.write_text(fabric_text)
    monkeypatch.setattr(nvidia_smi, "PROC_VERSION", proc)
    monkeypatch.setattr(nvidia_smi, "GPUS", gpu_file)
    monkeypatch.setattr(nvidia_smi, "FABRIC_STATE", fabric)
    monkeypatch.setattr(nvidia_smi, "LIBRARY_VERSION", "580.95.05")
    monkeypatch.setattr(nvidia_smi, "persistence_active", lambda: True)
    code = nvidia_smi.main(["-q"])
    return code, capsys.readouterr().out


def test_nvidia_smi_q_gives_the_fabric_section_the_health_gate_reads(monkeypatch, tmp_path, capsys):
    from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.fabric import (
        fabric_parse,
        fabric_problems,
    )

    code, out = smi_q(monkeypatch, tmp_path, capsys)
    assert code == 0
    gpus = fabric_parse(out)
    assert [(g["index"], g["bus_id"], g["name"]) for g in gpus] == [
        (0, "00000000:18:00.0", "NVIDIA H200"),
        (1, "00000000:2A:00.0", "NVIDIA H200"),
    ]
    assert [g["fabric"] for g in gpus] == [{"State": "N/A", "Status": "N/A"}] * 2  # outside an NVSwitch fabric
    assert fabric_problems(out, 0, "active", "nvidia-fabricmanager", 120) == []


@pytest.mark.parametrize(
    ("fabric_text", "wanted"),
    [
        ("In Progress\n", "fabric state In Progress (status N/A), not Completed"),
        ("Not Started\n", "fabric state Not Started (status N/A), not Completed"),
        ("Completed\nFailure\n", "fabric registration completed with status Failure, not Success"),
    ],
)
def test_nvidia_smi_q_fault_injection_fails_every_gpus_fabric(monkeypatch, tmp_path, capsys, fabric_text, wanted):
    from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.fabric import fabric_problems

    code, out = smi_q(monkeypatch, tmp_path, capsys, fabric_text)
    problems = fabric_problems(out, code, "active", "nvidia-fabricmanager", 120)
    assert [p["gpu"] for p in problems] == [0, 1]
    assert all(wanted in p["what"] for p in problems), problems
    _code, out = smi_q(monkeypatch, tmp_path, capsys, "Completed\n")
    assert fabric_problems(out, 0, "active", "nvidia-fabricmanager", 120) == []


# ------------------------------------------------------------------ the build (dpkg-deb, gpg)


@pytest.mark.skipif(not (shutil.which("dpkg-deb") and shutil.which("gpg")), reason="needs dpkg-deb and gpg")
def test_build_gives_a_signed_flat_repository_of_both_versions(tmp_path):
    kernel = "6.1.0-50-amd64"
    info = build.build(tmp_path, ["580.82.07", "580.95.05"], kernel)
    assert build.is_built(tmp_path, ["580.82.07", "580.95.05"], kernel)
    assert not build.is_built(tmp_path, ["580.95.05"], kernel)
    pool = tmp_path / "repo" / "debian12" / "x86_64"
    assert {"Packages", "Packages.gz", "Release", "InRelease", "Release.gpg", "3bf863cc.pub"} <= {
        path.name for path in pool.iterdir()
    }
    assert len(info["packages"]) == 2 * len(build.PACKAGES)
    # Release's hashes are those of the indexes, and apt's gpgv accepts both signatures with the exported key.
    release = (pool / "Release").read_text()
    assert hashlib.sha256((pool / "Packages").read_bytes()).hexdigest() in release
    assert gzip.decompress((pool / "Packages.gz").read_bytes()) == (pool / "Packages").read_bytes()
    keyring = tmp_path / "key.gpg"
    subprocess.run(["gpg", "--batch", "--yes", "--dearmor", "-o", str(keyring), str(tmp_path / "key.asc")], check=True)
    gpgv = ["gpgv", "--keyring", str(keyring)]
    subprocess.run([*gpgv, str(pool / "InRelease")], check=True, capture_output=True)
    subprocess.run([*gpgv, str(pool / "Release.gpg"), str(pool / "Release")], check=True, capture_output=True)
    # Each stanza's hash is its file's; the DKMS stand-in carries a module of its own version.
    stanzas = [aptrepo.parse_control(text) for text in (pool / "Packages").read_text().split("\n\n") if text.strip()]
    for stanza in stanzas:
        deb = pool / stanza["Filename"]
        assert stanza["SHA256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    dkms = pool / "nvidia-kernel-open-dkms_580.95.05-1_amd64.deb"
    assert "dkms" not in aptrepo.deb_control(dkms)["Depends"]
    unpacked = tmp_path / "unpacked"
    subprocess.run(["dpkg-deb", "-x", str(dkms), str(unpacked)], check=True)
    assert elf.modinfo((unpacked / "usr/src/nvidia-580.95.05/nvidia.ko").read_bytes())["version"] == "580.95.05"
    headers = tmp_path / "host" / info["headers"]
    assert aptrepo.deb_control(headers)["Package"] == f"linux-headers-{kernel}"
    assert "gnupg" not in {path.name for path in (tmp_path / "repo").rglob("*")}
