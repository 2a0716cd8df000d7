"""The simulated NVIDIA repository of the lab, and the stand-in kernel headers package.

build() writes, under the lab's gpu-sim folder (<LAB_DIR>/gpu-sim):

    repo/debian12/x86_64/   a flat apt repository laid out and named as NVIDIA's CUDA
                            repository for Debian 12 (nvidia_driver_source: cuda), holding
                            the packages below in every version asked for (revision -1),
                            Packages, Packages.gz, Release, InRelease, Release.gpg, and the
                            public key also under NVIDIA's key name (3bf863cc.pub)
    key.asc                 the armored public key (nvidia_driver_repo_key_file)
    gnupg/                  the private GNUPGHOME holding the signing key (never mounted)
    host/linux-headers-<kernel>_..._amd64.deb
                            headers stand-in for this machine's kernel (lab.py installs it
                            into each sim container with dpkg -i, as an image comes with
                            its kernel's headers)
    ready.json              what was built (versions, kernel, builder digest): built once

The package set is what the nvidia_driver role installs for nvidia_driver_source cuda,
kernel modules open, build dkms, flavour headless on Debian 12 (vars/Debian-12.yml;
package_names() in gpu_fleet.common module_utils/nvidia_driver/packages.py), with the dependencies that
molecule/nvidia_driver/files/mirror-packages.tsv gives them. tests/test_gpu_sim.py checks
both. Where the simulated packages differ from NVIDIA's, the difference is said at the
package below.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from . import aptrepo, elf

HERE = Path(__file__).resolve().parent
PAYLOAD = HERE / "payload"

REPO_DIST = "debian12"  # vars/Debian-12.yml repo_dist
REPO_ARCH = "x86_64"  # NVIDIA's name of amd64
REPO_KEY_NAME = "3bf863cc.pub"  # vars/Debian-12.yml repo_key_name
DEB_ARCH = "amd64"
REVISION = "1"
DEFAULT_VERSIONS = ("580.82.07", "580.95.05")
# The health gate's CUDA workload on sim hosts (inventory/lab/group_vars/gpu_hosts.yml).
GPU_CHECK_PATH = "/usr/lib/gpu-sim/gpu-check"
# NVIDIA's spelling of driver versions (the role's PIN_RE): 580.95.05, never 580.95.5.
VERSION_RE = re.compile(r"^[1-9][0-9]{2}\.(0|[1-9][0-9]{0,2})\.[0-9]{2}$")
MAINTAINER = "gpu-fleet lab <lab@gpu-fleet.invalid>"
KEY_UID = "gpu-fleet lab simulated NVIDIA repository <gpu-sim@lab.gpu-fleet.invalid>"
RELEASE_FIELDS = {
    "Origin": "gpu-fleet lab",
    "Label": "gpu-sim (simulated NVIDIA CUDA repository)",
    "Architectures": DEB_ARCH,
    "Description": "Stand-ins for NVIDIA's driver packages, scripts/gpu_sim/build.py",
}

# name -> Depends ({v}: the same version). From mirror-packages.tsv, except where noted.
PACKAGES = {
    # The role's marker package: its version is the driver's version.
    "nvidia-driver-cuda": "nvidia-smi (= {v}), libcuda1 (= {v}), nvidia-kernel-support (= {v})",
    # Ships /usr/bin/nvidia-smi, a python3 script (every lab image has python3; not declared).
    "nvidia-smi": "",
    # Ships /usr/lib/gpu-sim/gpu-check, the stand-in of the health gate's CUDA workload
    # (payload/gpu_check.py, a python3 script): the real libcuda1 holds the library CUDA needs.
    "libcuda1": "",
    "nvidia-kernel-support": "",
    # The real package depends on dkms and DKMS compiles the module; this one does not
    # depend on dkms: its postinst does what DKMS would (payload/dkms-postinst.sh) with a
    # prebuilt nvidia.ko that is only a .modinfo section (elf.py), for every kernel that
    # has /lib/modules/<kernel>/build; its postrm removes it again.
    "nvidia-kernel-open-dkms": "nvidia-kernel-support (= {v})",
    # Ships a daemon that only sleeps (payload/nvidia-persistenced.sh) and a Type=simple
    # unit (the real one forks); its postinst enables the unit but does not start it.
    "nvidia-persistenced": "",
}
CONFLICTS = {"nvidia-kernel-open-dkms": "nvidia-kernel-dkms"}
DESCRIPTIONS = {
    "nvidia-driver-cuda": "NVIDIA driver, compute only (headless)",
    "nvidia-smi": "NVIDIA System Management Interface",
    "libcuda1": "NVIDIA CUDA driver library",
    "nvidia-kernel-support": "NVIDIA kernel module support files",
    "nvidia-kernel-open-dkms": "NVIDIA open kernel module, built by DKMS",
    "nvidia-persistenced": "NVIDIA persistence daemon",
}


class BuildError(RuntimeError):
    pass


def parse_versions(text: str) -> list[str]:
    """'580.82.07 580.95.05' (blanks or commas) -> sorted, checked; the oldest first."""
    versions = sorted({item for item in re.split(r"[\s,]+", text.strip()) if item}, key=version_key)
    bad = [version for version in versions if not VERSION_RE.match(version)]
    if bad or not versions:
        raise BuildError(
            f"driver versions must be written as NVIDIA does, e.g. 580.95.05 (three numbers, the last of two "
            f"digits); got {text!r}"
        )
    return versions


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def doc(name: str, what: str) -> dict[str, tuple[bytes, int]]:
    text = f"{name}: {what}.\nA stand-in built by the gpu-fleet lab (scripts/gpu_sim/build.py); not NVIDIA's.\n"
    return {f"/usr/share/doc/{name}/README.lab-gpu-sim": (text.encode(), 0o644)}


def versioned_program(name: str, version: str) -> bytes:
    """A payload script with its LIBRARY_VERSION set to the package's version."""
    text = (PAYLOAD / name).read_text()
    line = 'LIBRARY_VERSION = ""'
    if line not in text:
        raise BuildError(f"{PAYLOAD / name} has no line {line!r} to set the version in")
    return text.replace(line, f'LIBRARY_VERSION = "{version}"', 1).encode()


def nvidia_smi_program(version: str) -> bytes:
    return versioned_program("nvidia_smi.py", version)


def nvidia_module(version: str) -> bytes:
    return elf.module([("version", version), ("license", "NVIDIA"), ("name", "nvidia")])


def package_contents(name: str, version: str) -> tuple[dict, dict]:
    """(files, maintainer scripts) of one simulated package at one driver version."""
    files = doc(name, DESCRIPTIONS[name])
    scripts: dict[str, str] = {}
    if name == "nvidia-smi":
        files["/usr/bin/nvidia-smi"] = (nvidia_smi_program(version), 0o755)
    elif name == "libcuda1":
        files[GPU_CHECK_PATH] = (versioned_program("gpu_check.py", version), 0o755)
    elif name == "nvidia-kernel-open-dkms":
        files[f"/usr/src/nvidia-{version}/nvidia.ko"] = (nvidia_module(version), 0o644)
        scripts["postinst"] = (PAYLOAD / "dkms-postinst.sh").read_text().replace("@VERSION@", version)
        scripts["postrm"] = (PAYLOAD / "dkms-postrm.sh").read_text()
    elif name == "nvidia-persistenced":
        files["/usr/bin/nvidia-persistenced"] = ((PAYLOAD / "nvidia-persistenced.sh").read_bytes(), 0o755)
        service = (PAYLOAD / "nvidia-persistenced.service").read_bytes()
        files["/lib/systemd/system/nvidia-persistenced.service"] = (service, 0o644)
        scripts["postinst"] = (PAYLOAD / "persistenced-postinst.sh").read_text()
        scripts["prerm"] = (PAYLOAD / "persistenced-prerm.sh").read_text()
        scripts["postrm"] = (PAYLOAD / "persistenced-postrm.sh").read_text()
    return files, scripts


def control(name: str, version: str) -> dict[str, str]:
    full = f"{version}-{REVISION}"
    fields = {"Package": name, "Version": full, "Architecture": DEB_ARCH, "Maintainer": MAINTAINER}
    if PACKAGES[name]:
        fields["Depends"] = PACKAGES[name].replace("{v}", full)
    if name in CONFLICTS:
        fields["Conflicts"] = CONFLICTS[name]
    fields["Section"] = "non-free/libs"
    fields["Priority"] = "optional"
    fields["Description"] = f"{DESCRIPTIONS[name]} (lab gpu-sim stand-in)\nBuilt by scripts/gpu_sim/build.py."
    return fields


def headers_package(out_dir: Path, kernel: str) -> Path:
    """linux-headers-<kernel>: the stand-in of this machine's kernel headers.

    The lab's containers run this machine's kernel, which no archive carries headers for;
    the role checks for linux-headers-<uname -r> with dpkg-query and the simulated DKMS
    builds for every kernel with /lib/modules/<kernel>/build. Empty modules.order and
    modules.builtin(.modinfo) stand for the kernel's own files, which depmod reads.
    """
    readme = (
        f"Lab stand-in for the headers of kernel {kernel} (scripts/gpu_sim/build.py): the lab's containers run\n"
        "the machine's kernel, which no archive carries headers for. Nothing can be compiled against it.\n"
    )
    files = {
        f"/lib/modules/{kernel}/build/README": (readme.encode(), 0o644),
        f"/lib/modules/{kernel}/modules.order": (b"", 0o644),
        f"/lib/modules/{kernel}/modules.builtin": (b"", 0o644),
        f"/lib/modules/{kernel}/modules.builtin.modinfo": (b"", 0o644),
    }
    fields = {
        "Package": f"linux-headers-{kernel}",
        "Version": "1.0~lab",
        "Architecture": DEB_ARCH,
        "Maintainer": MAINTAINER,
        "Section": "kernel",
        "Priority": "optional",
        "Description": f"Header files for Linux {kernel} (lab gpu-sim stand-in)\nBuilt by scripts/gpu_sim/build.py.",
    }
    return aptrepo.build_deb(out_dir, fields, files)


# What goes into the packages: a change to any of these makes the next `up` build again.
PACKAGED = ["nvidia_smi.py", "nvidia-persistenced.sh", "nvidia-persistenced.service", "dkms-postinst.sh"]
PACKAGED += ["dkms-postrm.sh", "persistenced-postinst.sh", "persistenced-prerm.sh", "persistenced-postrm.sh"]
PACKAGED += ["gpu_check.py"]


def builder_digest() -> str:
    """Changes when the builder or what it packages changes (a new build is due)."""
    digest = hashlib.sha256()
    for path in [*sorted(HERE.glob("*.py")), *(PAYLOAD / name for name in PACKAGED)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def wanted(versions: list[str], kernel: str) -> dict:
    return {"versions": versions, "kernel": kernel, "builder": builder_digest()}


def is_built(gpu_dir: Path, versions: list[str], kernel: str) -> bool:
    stamp = gpu_dir / "ready.json"
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    want = wanted(versions, kernel)
    return {key: recorded.get(key) for key in want} == want and (gpu_dir / "repo" / REPO_DIST).is_dir()


def build(gpu_dir: Path, versions: list[str], kernel: str) -> dict:
    """Build (again) everything under gpu_dir; returns what ready.json records.

    The repo folder itself stays (containers bind-mount it): only repo/debian12 is replaced.
    """
    missing = [tool for tool in ("dpkg-deb", "gpg") if not shutil.which(tool)]
    if missing:
        raise BuildError(
            f"{' and '.join(missing)} not found: --gpu sim builds the simulated NVIDIA repository on this machine "
            "with dpkg-deb (package dpkg) and gpg (package gnupg); install them (apt-get install dpkg gnupg)"
        )
    gpu_dir.mkdir(parents=True, exist_ok=True)
    (gpu_dir / "ready.json").unlink(missing_ok=True)
    work = gpu_dir / "build.tmp"
    shutil.rmtree(work, ignore_errors=True)
    pool = work / REPO_DIST / REPO_ARCH
    debs = []
    for version in versions:
        for name in PACKAGES:
            files, scripts = package_contents(name, version)
            debs.append(aptrepo.build_deb(pool, control(name, version), files, scripts))
    gnupg = gpu_dir / "gnupg"
    try:
        public_key = aptrepo.ensure_key(gnupg, KEY_UID)
        (gpu_dir / "key.asc").write_text(public_key)
        (pool / REPO_KEY_NAME).write_text(public_key)
        aptrepo.write_indexes(pool, debs, RELEASE_FIELDS)
        aptrepo.sign_release(gnupg, pool)
    finally:
        aptrepo.stop_agent(gnupg)
    repo = gpu_dir / "repo"
    repo.mkdir(exist_ok=True)
    old = work / "old"
    if (repo / REPO_DIST).exists():
        (repo / REPO_DIST).rename(old)
    (work / REPO_DIST).rename(repo / REPO_DIST)
    host = gpu_dir / "host"
    shutil.rmtree(host, ignore_errors=True)
    headers = headers_package(host, kernel)
    shutil.rmtree(work)
    info = {**wanted(versions, kernel), "packages": sorted(deb.name for deb in debs), "headers": headers.name}
    (gpu_dir / "ready.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
