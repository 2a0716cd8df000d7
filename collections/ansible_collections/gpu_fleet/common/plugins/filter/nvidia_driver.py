"""Decision logic of the nvidia_driver role, as pure functions.

Everything the role decides from what a host reports lives here, so that it is
tested with pytest against recorded outputs (tests/fixtures/nvidia/) rather than
only on machines with a GPU: parsing `nvidia-smi --format=csv`, parsing
/proc/driver/nvidia/version and /proc/modules, NVIDIA PCI devices from a sysfs
listing, version comparison (as numbers, never as strings), whether a pin belongs
to a branch, the package set per platform, the fabric manager choice, the reboot
decision and the verification of the running driver.

The functions raise ValueError for input they cannot use; the FilterModule at the
bottom turns that into AnsibleFilterError for Ansible. Nothing here imports
Ansible at module level: scripts/gpu-host-check.sh imports it on a GPU host
with the loader's Python.
"""

from __future__ import annotations

import re
import shlex

# dnf versionlock decisions live beside this module (module_utils); exported below as filters.
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver_dnf_locks import (
    driver_lock_plan,
    package_lock_plan,
)

NVIDIA_VENDOR = 0x10DE
# PCI class codes (class/subclass/prog-if as sysfs shows them, e.g. 0x030200).
CLASS_VGA = 0x0300
CLASS_3D = 0x0302
CLASS_BRIDGE_OTHER = 0x0680  # NVSwitch reports 0x068000

BRANCH_RE = re.compile(r"^[1-9][0-9]{2}$")
# NVIDIA driver versions as NVIDIA spells them (580.95.05, 580.105.08, 535.261.03,
# 550.54.14; the older two-part 390.157): the minor number without a leading zero,
# the third number always two digits. apt's `Pin: version 580.95.05-*` and dnf's
# `name-580.95.05` compare these digits as text, so `580.95.5` would match no
# package: only this spelling is accepted. Source: the version lists of NVIDIA's
# Unix driver archive and the package versions in NVIDIA's CUDA repositories
# (e.g. nvidia-driver-cuda 580.95.05-1, kmod-nvidia-open-dkms 3:580.95.05-1.el9).
PIN_RE = re.compile(r"^[1-9][0-9]{2}\.(0|[1-9][0-9]{0,2})(\.[0-9]{2})?$")
VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


# --------------------------------------------------------------------- versions


def version_tuple(version) -> tuple[int, int, int]:
    """'580.95.05' -> (580, 95, 5). Leading zeros are numbers, not text.

    Debian/RPM package versions ('580.95.05-1', '3:580.95.05-1.el9') are accepted:
    the epoch and the packaging revision are dropped.
    """
    text = str(version).strip()
    if ":" in text:
        text = text.split(":", 1)[1]
    match = VERSION_RE.match(text)
    if not match:
        raise ValueError(f"not an NVIDIA driver version: {version!r}")
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))


def version_compare(left, right) -> int:
    """-1, 0 or 1 as left is older than, the same as, or newer than right."""
    a, b = version_tuple(left), version_tuple(right)
    return (a > b) - (a < b)


def version_branch(version) -> str:
    """The branch (major number) of a version: '580.95.05' -> '580'."""
    return str(version_tuple(version)[0])


def valid_branch(branch) -> bool:
    return isinstance(branch, (str, int)) and not isinstance(branch, bool) and bool(BRANCH_RE.match(str(branch)))


def valid_pin(pin) -> bool:
    return isinstance(pin, str) and bool(PIN_RE.match(pin))


def pin_in_branch(pin, branch) -> bool:
    """Whether the exact version pin belongs to the branch ('580.95.05' to '580')."""
    if not valid_pin(pin) or not valid_branch(branch):
        return False
    return version_tuple(pin)[0] == int(str(branch))


def version_matches(version, pin="", branch="") -> bool:
    """Whether a running/installed version satisfies the pin, or else the branch."""
    if not version:
        return False
    try:
        found = version_tuple(version)
    except ValueError:
        return False
    if pin:
        return found == version_tuple(pin)
    if branch:
        return found[0] == int(str(branch))
    return True


# ------------------------------------------------------------------ host probing


def parse_probe(text: str) -> dict[str, str]:
    """Split the probe script's output into its '#section' parts."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in (text or "").splitlines():
        if line.startswith("#") and re.fullmatch(r"#[a-z0-9_]+", line.strip()):
            current = line.strip()[1:]
            sections.setdefault(current, [])
        elif current is not None:
            sections[current].append(line)
    return {name: "\n".join(lines).strip("\n") for name, lines in sections.items()}


def parse_pci_listing(text: str) -> list[dict]:
    """Parse lines 'ADDRESS VENDOR DEVICE CLASS' (one per PCI function, from sysfs)."""
    devices = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        address, vendor, device, klass = parts
        try:
            devices.append(
                {
                    "address": address,
                    "vendor": int(vendor, 16),
                    "device": int(device, 16),
                    "class": int(klass, 16),
                }
            )
        except ValueError:
            continue
    return devices


def gpu_inventory(devices: list[dict]) -> dict:
    """NVIDIA GPUs and NVSwitches among PCI functions.

    GPUs are NVIDIA functions of class VGA (0x0300xx) or 3D controller (0x0302xx);
    an NVSwitch is an NVIDIA function of class 0x0680xx (bridge, other). The HDMI
    audio and USB functions of consumer cards are neither.
    """
    nvidia = [device for device in devices if device["vendor"] == NVIDIA_VENDOR]
    gpus = [device for device in nvidia if device["class"] >> 8 in (CLASS_VGA, CLASS_3D)]
    switches = [device for device in nvidia if device["class"] >> 8 == CLASS_BRIDGE_OTHER]
    return {
        "gpu_count": len(gpus),
        "gpu_present": bool(gpus),
        "gpu_addresses": sorted(device["address"] for device in gpus),
        "gpu_device_ids": sorted({f"0x{device['device']:04x}" for device in gpus}),
        "nvswitch_count": len(switches),
        "nvswitch_present": bool(switches),
        "nvswitch_device_ids": sorted({f"0x{device['device']:04x}" for device in switches}),
    }


def parse_proc_version(text: str) -> dict:
    """Parse /proc/driver/nvidia/version.

    Open module:  'NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build ...'
    Proprietary:  'NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 ...'
    Returns version '' when the module is not loaded (no file, empty text).
    """
    result = {"version": "", "kernel_modules": "", "arch": "", "gcc": ""}
    for line in (text or "").splitlines():
        if line.startswith("NVRM version:"):
            body = line.split(":", 1)[1]
            match = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", body + " ")
            if not match:
                raise ValueError(f"no version in /proc/driver/nvidia/version line: {line!r}")
            result["version"] = match.group(1)
            result["kernel_modules"] = "open" if "Open Kernel Module" in body else "proprietary"
            arch = re.search(r"\b(x86_64|aarch64|ppc64le)\b", body)
            result["arch"] = arch.group(1) if arch else ""
        elif line.startswith("GCC version:"):
            result["gcc"] = line.split(":", 1)[1].strip()
    return result


def parse_modules(text: str) -> list[str]:
    """Names of the loaded kernel modules from /proc/modules."""
    return sorted({line.split()[0] for line in (text or "").splitlines() if line.strip()})


def host_state(probe_text: str) -> dict:
    """Everything the role needs to know about a host's GPUs, from one probe run."""
    sections = parse_probe(probe_text)
    inventory = gpu_inventory(parse_pci_listing(sections.get("pci", "")))
    loaded = parse_proc_version(sections.get("driver_version", ""))
    modules = parse_modules(sections.get("modules", ""))
    on_disk = (sections.get("module_on_disk", "") or "").strip().splitlines()
    return {
        **inventory,
        "loaded_version": loaded["version"],
        "loaded_kernel_modules": loaded["kernel_modules"],
        "nvidia_loaded": "nvidia" in modules or bool(loaded["version"]),
        "nouveau_loaded": "nouveau" in modules,
        "module_on_disk_version": on_disk[0].strip() if on_disk else "",
        "secure_boot": (sections.get("secure_boot", "") or "").strip() == "1",
        # NVLink 5 (HGX/DGX B200, B300): the switch trays show no NVSwitch PCI function; NVIDIA's driver
        # container finds them as InfiniBand devices whose VPD holds SW_MNG (NVIDIA/gpu-driver-container
        # ubuntu24.04/nvidia-driver, _assert_nvlink5_system), and then runs the fabric manager with nvlsm.
        "nvlink5_present": bool((sections.get("nvlink5", "") or "").split()),
        "nvlink5_devices": sorted((sections.get("nvlink5", "") or "").split()),
    }


# ----------------------------------------------------------------- nvidia-smi

SMI_FIELDS = [
    "index",
    "pci.bus_id",
    "name",
    "uuid",
    "driver_version",
    "persistence_mode",
    "memory.total",
    "serial",
]


def _smi_value(value: str):
    value = value.strip()
    if value in ("[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", ""):
        return None
    return value


def parse_nvidia_smi_csv(text: str, fields=None) -> list[dict]:
    """Rows of `nvidia-smi --query-gpu=FIELDS --format=csv,noheader,nounits`.

    Names contain no commas; values are stripped; '[N/A]' becomes None.
    """
    fields = list(fields or SMI_FIELDS)
    rows = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        values = line.split(",")
        if len(values) != len(fields):
            raise ValueError(
                f"nvidia-smi line {number} has {len(values)} values for {len(fields)} fields: {line.strip()!r}"
            )
        rows.append({field: _smi_value(value) for field, value in zip(fields, values, strict=True)})
    return rows


def verify(rows: list[dict], pin="", branch="", expected_count=0) -> dict:
    """Check what nvidia-smi reports against what the role was asked for."""
    problems = []
    versions = sorted({row.get("driver_version") or "" for row in rows})
    if not rows:
        problems.append("nvidia-smi lists no GPU")
    for version in versions:
        if not version_matches(version, pin, branch):
            wanted = f"exactly {pin} (nvidia_driver_version)" if pin else f"branch {branch} (nvidia_driver_branch)"
            problems.append(f"driver {version or 'unknown'} is running, wanted {wanted}")
    if expected_count and len(rows) != int(expected_count):
        problems.append(f"nvidia-smi lists {len(rows)} GPU(s), nvidia_driver_expected_gpu_count is {expected_count}")
    off = [row.get("index") for row in rows if (row.get("persistence_mode") or "").lower() != "enabled"]
    if off:
        problems.append(f"persistence mode is off on GPU(s) {', '.join(str(index) for index in off)}")
    return {
        "verified": not problems,
        "problems": problems,
        "gpu_count": len(rows),
        "driver_version": versions[0] if len(versions) == 1 else ",".join(versions),
        "gpus": [
            {key: row.get(key) for key in ("index", "pci.bus_id", "name", "uuid", "persistence_mode")} for row in rows
        ],
    }


# ------------------------------------------------------------ package choices


def _fmt(template: str, branch, unbranched_from="") -> str:
    """Fill in the branch; from `unbranched_from` on the names carry no branch.

    NVIDIA's Ubuntu repositories rename the driver packages from 590 on by
    removing the branch (NVIDIA driver installation guide, "Recent Updates",
    "Ubuntu 590 and later packages": nvidia-dkms-580-open -> nvidia-dkms-open,
    libnvidia-compute-580 -> libnvidia-compute, ...). Ubuntu's own archive keeps
    the branch (canonical/nvidia-graphics-drivers, branch 595: nvidia-utils-595).
    """
    if unbranched_from and valid_branch(branch) and int(str(branch)) >= int(str(unbranched_from)):
        return template.replace("-{branch}", "").replace("{branch}", "")
    return template.replace("{branch}", str(branch))


def plan_errors(platform: dict, source, branch, pin, kernel_modules, build, flavour) -> list[str]:
    """Why these settings cannot be installed on this platform; [] when they can.

    Every message names the variable to change.
    """
    errors = []
    if not valid_branch(branch):
        errors.append(f"nvidia_driver_branch must be a driver branch of three digits such as '580'; got {branch!r}")
    if pin and not valid_pin(pin):
        errors.append(
            f"nvidia_driver_version must be an exact driver version such as '580.95.05' (or empty); got {pin!r}"
        )
    elif pin and valid_branch(branch) and not pin_in_branch(pin, branch):
        errors.append(
            f"nvidia_driver_version {pin} does not belong to nvidia_driver_branch {branch}: "
            f"set the branch to {version_branch(pin)} or pick a {branch}.x version"
        )
    sources = platform.get("sources", {})
    name = platform.get("name", "this platform")
    if source not in sources:
        errors.append(
            f"nvidia_driver_source {source!r} is not offered on {name}; offered: {', '.join(sorted(sources))}"
        )
        return errors
    offer = sources[source]
    branches = [str(item) for item in offer.get("branches", [])]
    if branches and valid_branch(branch) and str(branch) not in branches:
        errors.append(
            f"nvidia_driver_branch {branch} is not offered by nvidia_driver_source {source} on {name}; "
            f"offered: {', '.join(branches)}"
        )
    # NVIDIA's repositories stop building proprietary modules at 620 (driver installation guide 620,
    # "Recent Updates", "Proprietary Kernel Modules Removed"; its "Kernel Modules" page lists only
    # the open ones, where 610's still lists both flavours): the dnf stream 620-dkms and apt's
    # proprietary packages of 620 do not exist, and a pin would fail only at the install.
    removed_at = offer.get("proprietary_before")
    if kernel_modules == "proprietary" and removed_at and valid_branch(branch) and int(str(branch)) >= int(removed_at):
        errors.append(
            f"nvidia_driver_kernel_modules proprietary is not offered by nvidia_driver_source {source} on {name} "
            f"from branch {removed_at} on (NVIDIA removed the proprietary modules there); got nvidia_driver_branch "
            f"{branch}. Set nvidia_driver_kernel_modules: open (Turing and newer), or an nvidia_driver_branch before "
            f"{removed_at} for GPUs older than Turing"
        )
    modules = offer.get("packages", {}).get(kernel_modules)
    if modules is None:
        errors.append(
            f"nvidia_driver_kernel_modules {kernel_modules!r} is not offered by {source} on {name}; "
            f"offered: {', '.join(sorted(offer.get('packages', {})))}"
        )
        return errors
    if build not in modules:
        errors.append(
            f"nvidia_driver_build {build!r} is not offered for {kernel_modules} modules by {source} on {name}; "
            f"offered: {', '.join(sorted(modules))}"
        )
        return errors
    if flavour not in modules[build]:
        errors.append(
            f"nvidia_driver_flavour {flavour!r} is not offered by {source} on {name}; "
            f"offered: {', '.join(sorted(modules[build]))}"
        )
    return errors


def package_names(platform: dict, source, branch, kernel_modules, build, flavour, kernels=()) -> list[str]:
    """The packages to install, branch filled in; versions are pinned separately.

    Templates with {kernel} (Ubuntu's precompiled modules) give one package per
    kernel to build for: linux-modules-nvidia-580-open-6.8.0-1015-aws follows the
    running kernel's flavour (aws, lowlatency, nvidia, ...), where the -generic
    metapackage would pull in a generic kernel beside it.
    """
    errors = plan_errors(platform, source, branch, "", kernel_modules, build, flavour)
    if errors:
        raise ValueError("; ".join(errors))
    offer = platform["sources"][source]
    templates = offer["packages"][kernel_modules][build][flavour]
    names = []
    for template in templates:
        name = _fmt(template, branch, offer.get("unbranched_from", ""))
        if "{kernel}" in name:
            names.extend(name.replace("{kernel}", str(kernel)) for kernel in kernels)
        else:
            names.append(name)
    return names


def package_specs(names: list[str], family: str, pin="") -> list[str]:
    """Names with the exact version for the package manager: apt 'n=580.95.05-*' is
    not accepted by apt, so apt pins go through a preferences file and names stay
    bare here; dnf takes 'name-580.95.05'."""
    if family == "dnf" and pin:
        return [f"{name}-{pin}" for name in names]
    return list(names)


def apt_pin_version(branch, pin="") -> str:
    """The `Pin: version` glob of the apt preferences file."""
    if pin:
        return f"{pin}-*"
    return f"{branch}.*"


def _branch_entry(table: dict, branch):
    """The entry of {first branch: value} that applies to this branch."""
    keys = sorted((int(str(key)) for key in table), reverse=True)
    for key in keys:
        if int(str(branch)) >= key:
            return table.get(key, table.get(str(key)))
    return None


def fabric_manager_wanted(inventory: dict, mode) -> bool:
    """auto: where sysfs shows an NVSwitch (NVLink 4 and older) or an NVLink 5
    switch tray's management port (HGX/DGX B200, B300: no NVSwitch PCI function)."""
    present = bool(inventory.get("nvswitch_present")) or bool(inventory.get("nvlink5_present"))
    return mode == "always" or (mode == "auto" and present)


def fabric_manager_errors(inventory: dict, mode, platform: dict, source, branch, flavour) -> list[str]:
    """Why the fabric manager cannot be installed from this source ([] when it can)."""
    if not fabric_manager_wanted(inventory, mode) or not valid_branch(branch):
        return []
    name = platform.get("name", "this platform")
    offer = platform.get("sources", {}).get(source, {}).get("fabric_manager") or {}
    if not offer or _branch_entry(offer.get("packages", {}), branch) is None:
        return [
            f"nvidia_driver_source {source} on {name} carries no fabric manager for branch {branch}, and this host "
            "needs one (NVSwitch or NVLink 5): set nvidia_driver_source: cuda, or nvidia_driver_fabric_manager: never"
        ]
    needed_flavour = offer.get("requires_flavour", "")
    if needed_flavour and flavour != needed_flavour:
        return [
            f"the fabric manager of {name}'s archive runs only with the -{needed_flavour} driver line (it depends on "
            f"nvidia-kernel-common-{branch}-{needed_flavour}): set nvidia_driver_flavour: {needed_flavour}, or "
            "nvidia_driver_source: cuda"
        ]
    return []


def _fabric_manager_names(inventory: dict, platform: dict, source, branch, arch) -> tuple[list[str], list[str]]:
    """(names held at the driver's version, names with versions of their own) of the fabric manager's set."""
    offer = platform["sources"][source]["fabric_manager"]
    versioned = [_fmt(template, branch) for template in _branch_entry(offer["packages"], branch)]
    nvlink5 = bool(inventory.get("nvlink5_present"))
    unversioned = list(offer.get("nvlink5_packages", [])) if nvlink5 else []
    # NVLink 5 also needs libnvsdm at the driver's version, built for x86_64 only
    # (NVIDIA/gpu-driver-container ubuntu24.04/install.sh and rhel9/install.sh, nvsdm_install:
    # "libnvsdm packages are not available for arm64"; libnvsdm from 580, libnvsdm-<branch>
    # from 560: ubuntu24.04/precompiled/local-repo.sh, nvsdm_download).
    nvsdm = _branch_entry(offer.get("nvsdm_packages", {}), branch) if offer.get("nvsdm_packages") else None
    if nvlink5 and nvsdm and str(arch) in ("x86_64", "amd64"):
        versioned += [_fmt(template, branch) for template in nvsdm]
    return versioned, unversioned


def fabric_manager_held_names(inventory: dict, mode, platform: dict, source, branch, flavour="", arch="x86_64") -> list:
    """The fabric manager packages that must exist at the driver's exact version ([] where none is needed).

    Known before the driver version is: the plan reads their versions from the source before any change.
    A source that cannot give a fabric manager is refused by fabric_manager_errors, not here.
    """
    if not fabric_manager_wanted(inventory, mode) or not valid_branch(branch):
        return []
    if fabric_manager_errors(inventory, mode, platform, source, branch, flavour):
        return []
    return _fabric_manager_names(inventory, platform, source, branch, arch)[0]


def fabric_manager(
    inventory: dict, mode, platform: dict, source, branch, driver_version, flavour="", arch="x86_64"
) -> dict:
    """Whether and which fabric manager packages to install: exactly the driver's version.

    mode: 'auto' (only where an NVSwitch or NVLink 5 is present), 'always', 'never'.
    driver_version: the installed driver's version (or the pin); the fabric
    manager and libnvidia-nscq must equal it, or the fabric manager refuses to
    start. Names per branch, as NVIDIA's driver container installs them
    (NVIDIA/gpu-driver-container ubuntu24.04/precompiled/nvidia-driver and
    rhel9/precompiled/Dockerfile): from 580 nvidia-fabricmanager and
    libnvidia-nscq (apt and dnf), before it nvidia-fabricmanager-<branch> and
    libnvidia-nscq-<branch> on apt, nvidia-fabric-manager and
    libnvidia-nscq-<branch> on dnf. NVLink 5 systems also need nvlsm and
    infiniband-diags (NVIDIA/gpu-driver-container ubuntu24.04/install.sh,
    nvlink5_pkgs_install), which carry versions of their own.
    """
    none = {
        "needed": False,
        "package": "",
        "packages": [],
        "specs": [],
        "held": [],
        "version": "",
        "service": "",
        "nvlink5": False,
        "wait_modules": [],
        "reason": "no NVSwitch or NVLink 5",
    }
    if not fabric_manager_wanted(inventory, mode):
        return none
    errors = fabric_manager_errors(inventory, mode, platform, source, branch, flavour)
    if errors:
        raise ValueError("; ".join(errors))
    if not driver_version:
        raise ValueError("the fabric manager version follows the driver's, and no driver version is known yet")
    version = upstream_version(driver_version)
    versioned, unversioned = _fabric_manager_names(inventory, platform, source, branch, arch)
    nvlink5 = bool(inventory.get("nvlink5_present"))
    if platform.get("family") == "dnf":
        specs = [f"{name}-{version}" for name in versioned]
    else:
        specs = [f"{name}={version}-*" for name in versioned]
    return {
        "needed": True,
        "package": versioned[0],
        "packages": versioned + unversioned,
        "specs": specs + unversioned,
        "held": versioned,
        "version": version,
        "service": platform.get("fabric_manager_service", "nvidia-fabricmanager"),
        "nvlink5": nvlink5,
        # The fabric manager of NVLink 5 talks to the switch trays through InfiniBand management
        # datagrams: NVIDIA's driver container starts it only once mlx5_core and ib_umad are loaded
        # (NVIDIA/gpu-driver-container ubuntu24.04/nvidia-driver, _ensure_nvlink5_prerequisites).
        "wait_modules": ["mlx5_core", "ib_umad"] if nvlink5 else [],
        "reason": "NVLink 5 present"
        if nvlink5
        else "NVSwitch present"
        if inventory.get("nvswitch_present")
        else "nvidia_driver_fabric_manager is always",
    }


def kernel_header_packages(platform: dict, kernels, build) -> list[str]:
    """The header packages DKMS needs to build the module for each kernel.

    DKMS builds only for kernels whose headers are installed, and with recommends
    off the driver packages pull in none (Debian's nvidia-kernel-dkms only
    recommends linux-headers-*). NVIDIA's driver installation guide, "Pre-installation
    Actions": "the kernel headers and development packages for the running version
    of the kernel [must] be installed at the time of the driver installation, as well
    as whenever the driver is rebuilt". Precompiled modules need none.
    """
    if build != "dkms":
        return []
    names: list[str] = []
    for kernel in kernels:
        if not valid_kernel(kernel):
            raise ValueError(
                f"nvidia_driver_kernels: {kernel!r} is not a kernel release such as '6.1.0-50-amd64' (uname -r)"
            )
        for template in platform.get("kernel_headers", []):
            name = template.replace("{kernel}", str(kernel))
            if name not in names:
                names.append(name)
    return names


def dkms_kernel_pin_packages(platform: dict, running_kernel, build) -> list[str]:
    """The running kernel's kernel-devel-matched (EL9), so that dkms does not pull in a newer kernel.

    dkms on EL9 requires `(kernel-devel-matched if kernel-core)` (Fedora/EPEL dkms.spec), a
    package that itself requires kernel-core and kernel-devel of its own version: dnf satisfies
    it with the newest, which installs a newer kernel that the next boot starts (issue 29, item 8).
    Installed first at the running kernel's version, it satisfies dkms and pulls in nothing.
    """
    template = platform.get("dkms_kernel_pin", "")
    if build != "dkms" or not template or not running_kernel:
        return []
    if not valid_kernel(running_kernel):
        raise ValueError(f"the running kernel {running_kernel!r} is not a kernel release such as '6.1.0-50-amd64'")
    return [template.replace("{kernel}", str(running_kernel))]


KERNEL_RE = re.compile(r"^[0-9]+\.[0-9]+[A-Za-z0-9._+~-]*$")


def valid_kernel(kernel) -> bool:
    """A kernel release as `uname -r` prints it (6.1.0-50-amd64, 5.14.0-427.13.1.el9_4.x86_64)."""
    return isinstance(kernel, str) and bool(KERNEL_RE.match(kernel))


def driver_marker(platform: dict, source, kernel_modules, build, flavour) -> str:
    """The package (template) whose version is the driver's version.

    Not linux-modules-* (versioned like the kernel), and not every package of the
    set: Debian's nvidia-persistenced has its own numbering (bookworm:
    535.171.04-1~deb12u1 beside driver 535.261.03-1).
    """
    templates = platform["sources"][source]["packages"][kernel_modules][build][flavour]
    return next(template for template in templates if not template.startswith("linux-modules-"))


def marker_prefix(platform: dict, source, kernel_modules, build, flavour) -> str:
    """What a package-name listing starts from: the marker up to its branch, if any."""
    return driver_marker(platform, source, kernel_modules, build, flavour).split("{branch}", 1)[0]


def parse_package_rows(text: str) -> list[tuple[str, str]]:
    """(name, version) rows of `apt-cache madison` ('name | version | origin') or of
    `dnf repoquery --qf '%{name} | %{epoch}:%{version}-%{release} | %{repoid}'`.
    Source-package rows of madison (origin '... Sources') are not installable."""
    rows = []
    for line in (text or "").splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) != 3 or not parts[0] or not parts[1] or parts[2].endswith("Sources"):
            continue
        rows.append((parts[0], parts[1]))
    return rows


def carried_versions(text: str, platform: dict, source, kernel_modules, build, flavour) -> list[str]:
    """Driver versions ('580.95.05') a package index carries for this package set, oldest first."""
    marker = driver_marker(platform, source, kernel_modules, build, flavour)
    if platform["sources"][source].get("unbranched_from"):
        # 590 and later carry no branch in the name: nvidia-headless-580-open and nvidia-headless-open.
        regex = re.escape(marker).replace(re.escape("-{branch}"), "(?:-[1-9][0-9]{2})?")
    else:
        regex = re.escape(marker)
    pattern = re.compile("^" + regex.replace(re.escape("{branch}"), "[1-9][0-9]{2}") + "$")
    found = {}
    for name, version in parse_package_rows(text):
        if not pattern.match(name):
            continue
        try:
            key = version_tuple(version)
        except ValueError:
            continue
        found[key] = upstream_version(version)
    return [found[key] for key in sorted(found)]


def availability_errors(carried: list[str], branch, pin, where: str, hint: str = "") -> list[str]:
    """Why the branch or pin cannot come from this package index ([] when it can).

    apt installs whatever version its preferences allow when the pinned one is
    missing, and NVIDIA's repositories do not carry every branch (debian13 had no
    580 when it opened: NVIDIA/cuda-repo-management issue #38), so the role checks
    the index itself before it changes anything.
    """
    if not carried:
        return [f"{where} carries no NVIDIA driver package for this package set{hint}"]
    branches = sorted({version_tuple(version)[0] for version in carried})
    of_branch = [version for version in carried if version_tuple(version)[0] == int(str(branch))]
    if not of_branch:
        return [
            f"nvidia_driver_branch {branch} is not carried by {where}: it carries the branch(es) "
            f"{', '.join(str(number) for number in branches)} (newest {carried[-1]}). Set nvidia_driver_branch to one "
            "of them, or nvidia_driver_repo_url / nvidia_driver_source to a source that carries it"
        ]
    if pin and not any(version_tuple(version) == version_tuple(pin) for version in of_branch):
        return [
            f"nvidia_driver_version {pin} is not carried by {where}: branch {branch} there has "
            f"{', '.join(of_branch)}. Set nvidia_driver_version to one of them, or leave it empty for the newest"
        ]
    return []


def missing_packages(text: str) -> list[str]:
    """Names the probe marked 'NAME missing' (neither installed nor available)."""
    missing = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == "missing":
            missing.append(parts[0])
    return missing


def unbuilt_kernels(text: str, version) -> list[str]:
    """Kernels whose nvidia module on disk is absent or not the installed driver.

    text: lines 'KERNEL VERSION' ('KERNEL none' when modinfo -k finds no module).
    Debian's own packages name the module nvidia-current; the probe asks for both.
    """
    unbuilt = []
    for line in (text or "").splitlines():
        parts = line.split()
        if not parts:
            continue
        found = parts[1] if len(parts) > 1 else "none"
        try:
            same = found != "none" and version_tuple(found) == version_tuple(version)
        except ValueError:
            same = False
        if not same:
            unbuilt.append(f"{parts[0]} ({'no module' if found == 'none' else 'module ' + found})")
    return unbuilt


def installed_packages(text: str) -> dict[str, str]:
    """name -> version of the installed packages in the host probe's '#installed' rows.

    apt: `dpkg-query -W -f '${Package} | ${Version} | ${db:Status-Status}\\n' NAMES` (a removed
    package keeps a 'config-files' row, which is not installed); dnf: `rpm -q --qf
    '%{name} | %{epoch}:%{version}-%{release} | installed\\n' NAMES` (epoch '(none)' when unset;
    'package X is not installed' lines have no columns).
    """
    found = {}
    for line in (text or "").splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) == 3 and parts[0] and parts[1] and parts[2] == "installed":
            found[parts[0]] = parts[1].replace("(none):", "")
    return found


def install_plan(
    installed: dict,
    platform: dict,
    source,
    kernel_modules,
    build,
    flavour,
    branch,
    pin="",
    busy_units=(),
    stop_busy=False,
) -> dict:
    """Whether the driver install changes the host's driver, how apt installs it, and whether it waits.

    installed: name -> version of the installed packages (installed_packages). The driver's own
    package (driver_marker) at the pin, or else in the branch, is current. apt installs a pin with
    `state: latest` (the preferences file holds that version), and a branch the host does not run
    yet also with `latest` under the branch's pin: Debian's names, and Ubuntu's from 590, carry
    no branch, so `present` kept 580 installed for a 590 target. A branch the host already runs
    stays `present` (no drift inside the branch between runs).

    A new driver's userspace over the loaded old module breaks NVML ("Driver/library version
    mismatch") and every job restart, so while a training unit (busy_units) runs the install
    waits (deferred: nothing is changed), unless stop_busy: then the units are stopped first
    (stop_units), as the reboot would stop them.
    """
    offer = platform["sources"][source]
    marker = _fmt(
        driver_marker(platform, source, kernel_modules, build, flavour), branch, offer.get("unbranched_from", "")
    )
    installed_version = ""
    if installed.get(marker):
        try:
            installed_version = upstream_version(installed[marker])
        except ValueError:
            installed_version = ""
    current = version_matches(installed_version, pin, branch)
    busy = sorted(set(busy_units or []))
    change = not current
    return {
        "marker": marker,
        "installed_version": installed_version,
        "current": current,
        "apt_state": "latest" if pin or change else "present",
        "deferred": bool(busy) and change and not stop_busy,
        "blocked_by": busy if busy and change and not stop_busy else [],
        "stop_units": busy if busy and change and stop_busy else [],
    }


def _version_sort_key(text: str):
    """GRUB orders kernels with `sort -V` (grub-mkconfig_lib, version_sort): digit runs as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.findall(r"\d+|\D+", text)]


def boot_kernel(probe_text: str, override="") -> dict:
    """The kernel the next boot starts, from the host probe ('#grubby', '#grub_default', '#images').

    EL: `grubby --default-kernel` prints the default entry's /boot/vmlinuz-<release>. Debian and
    Ubuntu: GRUB_DEFAULT unset or 0 boots the first menu entry, which grub-mkconfig's 10_linux
    makes the newest /boot/vmlinuz-* by version sort (GNU GRUB manual, "Simple configuration",
    GRUB_DEFAULT; grub-mkconfig_lib version_find_latest). Any other GRUB_DEFAULT (saved, a title,
    an id, "1>2") is not followed: known is false and the caller asks for nvidia_driver_boot_kernel.
    No kernel image under /boot (containers, images whose kernel comes from outside) gives ''.
    """
    if override:
        return {"kernel": str(override), "known": True, "how": "nvidia_driver_boot_kernel"}
    sections = parse_probe(probe_text)
    grubby = (sections.get("grubby", "") or "").strip().splitlines()
    if grubby:
        printed = grubby[-1].strip()
        release = printed[len("/boot/vmlinuz-") :] if printed.startswith("/boot/vmlinuz-") else ""
        # A rescue entry (vmlinuz-0-rescue-<machine id>) or anything else is not a release to build for.
        if not valid_kernel(release) or _grub_skips(release):
            return {"kernel": "", "known": False, "how": f"grubby --default-kernel printed {printed!r}"}
        return {"kernel": release, "known": True, "how": "grubby --default-kernel"}
    images = [
        line.strip()
        for line in (sections.get("images", "") or "").splitlines()
        if valid_kernel(line.strip()) and not _grub_skips(line.strip())
    ]
    if not images:
        return {"kernel": "", "known": True, "how": "no kernel image in /boot"}
    default = ""
    for line in (sections.get("grub_default", "") or "").splitlines():
        match = re.match(r"^\s*GRUB_DEFAULT=(.*)$", line)
        if match:
            default = _shell_value(match.group(1))  # the last assignment wins, as the shell reads them
    if default not in ("", "0"):
        return {"kernel": "", "known": False, "how": f"GRUB_DEFAULT={default}"}
    return {
        "kernel": max(images, key=_version_sort_key),
        "known": True,
        "how": "newest /boot/vmlinuz-* (GRUB_DEFAULT=0)",
    }


def _grub_skips(release: str) -> bool:
    """Images grub-mkconfig leaves out of the menu (grub-mkconfig_lib, grub_file_is_not_garbage):
    package managers' leftovers and signatures."""
    return bool(re.search(r"\.dpkg-[^/]*$|\.rpmsave$|\.rpmnew$|\.sig$", release))


def _shell_value(text: str) -> str:
    """A shell assignment's value as /etc/default/grub's reader (sh) sees it: quotes removed,
    a trailing comment dropped. Unbalanced quotes give the raw text, which is not followed."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return text.strip()
    return " ".join(words)


def kernel_header_metapackages(platform: dict, installed_images, build) -> list[str]:
    """The headers metapackage beside each installed kernel metapackage (DKMS only).

    A kernel metapackage (Debian linux-image-amd64, linux-image-cloud-amd64; Ubuntu
    linux-image-generic, linux-image-aws, ...) brings each new kernel; its headers twin
    (linux-headers-amd64, linux-headers-generic, ...) brings that kernel's headers with it, so
    DKMS builds the module when the kernel is installed, before the reboot into it. Versioned
    images (a digit after the prefix), unsigned and debug images have no twin.
    """
    template = platform.get("kernel_headers_metapackage", "")
    if build != "dkms" or not template:
        return []
    names = []
    for name in installed_images or []:
        flavour = str(name).strip()[len("linux-image-") :] if str(name).startswith("linux-image-") else ""
        if (
            not flavour
            or flavour[0].isdigit()
            or flavour.startswith("unsigned-")
            or flavour.endswith(("-dbg", "-unsigned"))
        ):
            continue
        header = template.replace("{flavour}", flavour)
        if header not in names:
            names.append(header)
    return names


def boot_module_errors(boot: dict, modules_text: str, version, host="this host") -> list[str]:
    """Why rebooting now would start a kernel without the installed driver's module ([] when it would not)."""
    if not boot.get("known", True):
        return [
            f"{host} boots by {boot.get('how')}, which the role does not follow: set nvidia_driver_boot_kernel to "
            "the kernel release the next boot starts, so that the role can check its module before rebooting"
        ]
    kernel = boot.get("kernel", "")
    if not kernel or not version:
        return []
    unbuilt = unbuilt_kernels(modules_text, version)
    if not unbuilt:
        return []
    return [
        f"{host} would boot kernel {kernel} ({boot.get('how')}), which has no module of NVIDIA driver {version}: "
        f"{', '.join(unbuilt)}. The reboot is refused and the host stays on its running kernel. Install that "
        f"kernel's headers and rebuild (dkms autoinstall -k {kernel}), or make the running kernel the default "
        "entry, then run the role again"
    ]


def parse_units(text: str) -> list[str]:
    """Unit names from `systemctl list-units --plain --no-legend` lines."""
    units = []
    for line in (text or "").splitlines():
        parts = line.split()
        if parts and "." in parts[0]:
            units.append(parts[0])
    return sorted(set(units))


def resolved_packages(text: str) -> list[dict]:
    """Packages the package manager would install, from a dry run.

    apt-get install --simulate: 'Inst nvidia-driver-cuda (580.95.05-1 local [amd64])';
    dnf install --assumeno: the table rows ' nvidia-driver-cuda  x86_64  3:580.95.05-1.el9  cuda  520 k'.
    """
    packages = {}
    for line in (text or "").splitlines():
        match = re.match(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ", line)
        if not match:
            match = re.match(r"^ (\S+)\s+(?:x86_64|aarch64|noarch|i686)\s+(\S+)\s+\S+\s+\d[\d.]* [kMG]\s*$", line)
        if match:
            packages[match.group(1)] = match.group(2)
    return [{"name": name, "version": packages[name]} for name in sorted(packages)]


# Binary names of NVIDIA's driver packages whose version is the driver's (Debian, Ubuntu and
# NVIDIA's repositories). Ubuntu's transitional packages keep their own branch's version while
# they depend on another branch's package: noble's nvidia-headless-550 550.163.01 depends on
# nvidia-headless-580 on amd64 (Ubuntu archive, noble, nvidia-headless-550), so the version
# that decides is that of every driver package apt installs, not only the named one.
DRIVER_PACKAGE_RE = re.compile(r"^(nvidia-|libnvidia-|libcuda1$|libnvcuvid1$|libnvoptix1$|xserver-xorg-video-nvidia)")
BRANCH_IN_NAME_RE = re.compile(r"-([1-9][0-9]{2})(?=-|$)")


def simulated_install_errors(
    text: str, branch, pin="", rc="0", where="apt-get install --simulate", unmet_hint: dict | None = None
) -> list[str]:
    """Why the simulated install would not give the target driver ([] when it would).

    unmet_hint: the platform's remedy ({'packages': [...], 'hint': '...'}) when apt cannot install
    one of those packages: NVIDIA's Debian packages depend on helper packages that Debian keeps in
    contrib, a component a minimal Debian host does not enable.

    text: `apt-get install --simulate` output ('Inst NAME [OLD] (VERSION ORIGIN [ARCH])'). Every
    NVIDIA driver package apt would install (DRIVER_PACKAGE_RE; not linux-modules-*, which carry
    the kernel's version) must carry the pin, or a version of the branch, and a branch in its
    name must be the target's: a transitional package of the target branch that pulls in
    another branch installs that branch's driver.
    """
    if str(rc).strip() not in ("", "0"):
        reasons = [line.strip() for line in (text or "").splitlines() if line.startswith(("E: ", " "))]
        hint = unmet_hint or {}
        unmet = [
            name
            for name in hint.get("packages") or []
            if any(re.search(rf"(?:^|[\s:|]){re.escape(name)}(?:[\s(]|$)", reason) for reason in reasons)
        ]
        remedy = f"{', '.join(unmet)} cannot be installed: {hint.get('hint', '')}" if unmet else ""
        return [
            f"{where} cannot install the driver packages (rc {str(rc).strip()}): "
            f"{' '.join(reasons[-8:]).rstrip('.') or 'no reason given'}. "
            + (remedy or "Check the package sources (apt-get update) and holds")
        ]
    wrong = []
    for package in resolved_packages(text):
        name, version = package["name"], package["version"]
        if not DRIVER_PACKAGE_RE.match(name):
            continue
        named = BRANCH_IN_NAME_RE.findall(name)
        try:
            numbered = version_tuple(upstream_version(version))[0] >= 100
        except ValueError:
            numbered = False
        off_target = numbered and not version_matches(upstream_version(version), pin, branch)
        other_branch = valid_branch(branch) and any(found != str(branch) for found in named)
        if off_target or other_branch:
            wrong.append(f"{name} {version}")
    if not wrong:
        return []
    target = f"nvidia_driver_version {pin}" if pin else f"nvidia_driver_branch {branch}"
    return [
        f"{where} would install {', '.join(wrong)} for {target}: a package of the target depends on another "
        "driver (Ubuntu's transitional packages depend on a newer branch's, e.g. noble's nvidia-headless-550 on "
        "nvidia-headless-580). Set nvidia_driver_branch to the branch that would be installed, or "
        "nvidia_driver_source to a source that still builds this branch"
    ]


def simulated_driver_version(text: str, marker: str) -> str:
    """The driver version apt would install for the marker package ('' when it installs none)."""
    for package in resolved_packages(text):
        if package["name"] == marker:
            try:
                return upstream_version(package["version"])
            except ValueError:
                return ""
    return ""


def planned_driver_version(carried: list[str], branch, pin="", simulated="", installed="") -> str:
    """The driver version the install ends at, known before any change.

    The pin; else the version installed when the host already runs the target (install_plan
    current: apt keeps it, `state: present`); else what the simulated install resolves (apt);
    else the newest version of the branch carried by the source (a dnf module stream installs
    its newest).
    """
    if pin:
        return str(pin)
    if installed and version_matches(installed, "", branch):
        return installed
    if simulated:
        return simulated
    if not valid_branch(branch):
        return ""
    of_branch = [version for version in carried if version_tuple(version)[0] == int(str(branch))]
    return of_branch[-1] if of_branch else ""


def fabric_manager_availability_errors(text: str, fm: dict, where: str) -> list[str]:
    """Why the fabric manager packages at the driver's exact version cannot come from the source.

    text: '#fabric_manager' rows of the sources probe (`apt-cache madison` or `dnf repoquery` in
    that shape) for the names fabric_manager() holds at the driver's version (fabric manager,
    libnvidia-nscq, libnvsdm). Each must exist at fm['version']; they fail at install time only
    after the driver is installed otherwise. [] where no fabric manager is needed.
    """
    if not fm.get("needed") or not fm.get("version"):
        return []
    rows: dict[str, list[str]] = {}
    for name, version in parse_package_rows(text):
        try:
            rows.setdefault(name, []).append(upstream_version(version))
        except ValueError:
            continue
    missing = []
    for name in fm.get("held", []):
        versions = rows.get(name, [])
        if not any(version_compare(version, fm["version"]) == 0 for version in versions):
            of_branch = sorted(
                {version for version in versions if version_tuple(version)[0] == version_tuple(fm["version"])[0]},
                key=version_tuple,
            )
            missing.append(f"{name} ({'has ' + ', '.join(of_branch) if of_branch else 'not carried'})")
    if not missing:
        return []
    return [
        f"{where} carries no {', '.join(missing)} at driver version {fm['version']}, which this host's fabric "
        "manager needs at exactly the driver's version (NVSwitch or NVLink 5): pin nvidia_driver_version to a "
        "version that has them, or set nvidia_driver_fabric_manager: never"
    ]


def _versions(entry) -> list[str]:
    """Version strings of one package_facts entry (a string, strings or dicts)."""
    if entry is None:
        return []
    if isinstance(entry, (str, dict)):
        entry = [entry]
    versions = []
    for item in entry:
        if isinstance(item, dict):
            version = str(item.get("version", ""))
            if item.get("epoch") not in (None, "", 0, "0") and ":" not in version:
                version = f"{item['epoch']}:{version}"
            if item.get("release") and "-" not in version:
                version = f"{version}-{item['release']}"
            versions.append(version)
        else:
            versions.append(str(item))
    return versions


def upstream_version(version) -> str:
    """'3:580.95.05-1.el9' -> '580.95.05' (epoch and packaging revision dropped)."""
    text = str(version).strip().split(":", 1)[-1]
    version_tuple(text)
    return re.split(r"[-~+]", text, maxsplit=1)[0]


def installed_driver_version(package_versions: dict, names: list[str]) -> str:
    """The newest driver version among the installed packages named ('580.95.05'), or ''.

    package_versions is ansible_facts.packages (name -> list of dicts with
    'version') or a plain name -> version(s) mapping.
    """
    best = None
    for name in names:
        for version in _versions(package_versions.get(name)):
            try:
                key = version_tuple(version)
            except ValueError:
                continue
            # Package versions of other numbering (linux-modules-* carry the kernel's) are not drivers.
            if key[0] < 100:
                continue
            if best is None or key > best[0]:
                best = (key, upstream_version(version))
    return best[1] if best else ""


def installed_package_set(package_versions: dict, names: list[str]) -> list[dict]:
    """name/version of the installed packages among names, for the report."""
    found = []
    for name in sorted(names):
        versions = _versions(package_versions.get(name))
        if versions:
            found.append({"name": name, "version": versions[0]})
    return found


# ------------------------------------------------------------ kernel module type

# GPUs without a GSP (Maxwell, Pascal, Volta) have PCI device ids below 0x1E00:
# the open modules' list of compatible GPUs starts at Turing's 0x1E02
# (NVIDIA/open-gpu-kernel-modules README, "Compatible GPUs"), and the open
# modules refuse the others ("not supported by open nvidia.ko because it does
# not include the required GPU System Processor").
FIRST_TURING_DEVICE = 0x1E00
# Blackwell (GB100 0x29xx, GB20x 0x2Bxx-0x2Fxx) and later run only the open modules
# (NVIDIA driver installation guide, "Kernel Modules").
FIRST_BLACKWELL_DEVICE = 0x2900
# Grace Hopper (GH200 120GB/480GB 0x2342, GH200 144G HBM3e 0x2348: the list of
# NVIDIA/open-gpu-kernel-modules README, "Compatible GPUs") runs only the open modules:
# "For cutting-edge platforms such as NVIDIA Grace Hopper or NVIDIA Blackwell, you must use
# the open-source GPU kernel modules. The proprietary drivers are unsupported on these
# platforms" (NVIDIA technical blog, "NVIDIA Transitions Fully Towards Open-Source GPU Kernel
# Modules"). Its device ids lie among Hopper's, below Blackwell's.
GRACE_HOPPER_DEVICES = frozenset({0x2342, 0x2348})
# R580 is the last branch for Maxwell, Pascal and Volta (NVIDIA's "CUDA toolkit,
# driver and architecture matrix"; NVIDIA/yum-packaging-precompiled-kmod issue #68:
# "590 does not function with Maxwell, Pascal, Volta GPUs").
LAST_PRE_TURING_BRANCH = 580


def module_type_errors(state: dict, kernel_modules, branch) -> list[str]:
    """Why these GPUs cannot run this module type and branch ([] when they can)."""
    ids = [int(device, 16) for device in state.get("gpu_device_ids", [])]
    old = sorted(f"0x{device:04x}" for device in ids if device < FIRST_TURING_DEVICE)
    new = sorted(
        f"0x{device:04x}" for device in ids if device >= FIRST_BLACKWELL_DEVICE or device in GRACE_HOPPER_DEVICES
    )
    errors = []
    if kernel_modules == "open" and old:
        errors.append(
            f"nvidia_driver_kernel_modules open cannot drive GPU(s) {', '.join(old)} (older than Turing, no GSP): "
            f"set nvidia_driver_kernel_modules: proprietary and a branch up to {LAST_PRE_TURING_BRANCH}"
        )
    if kernel_modules == "proprietary" and new:
        errors.append(
            f"nvidia_driver_kernel_modules proprietary cannot drive GPU(s) {', '.join(new)} "
            "(Grace Hopper, Blackwell or newer): "
            "set nvidia_driver_kernel_modules: open"
        )
    if old and valid_branch(branch) and int(str(branch)) > LAST_PRE_TURING_BRANCH:
        errors.append(
            f"nvidia_driver_branch {branch} does not support GPU(s) {', '.join(old)} (Maxwell, Pascal or Volta): "
            f"set nvidia_driver_branch to {LAST_PRE_TURING_BRANCH} or older, with proprietary modules"
        )
    return errors


# Where DKMS's signing certificate lies when the platform data names none: dkms's own default
# (dkms-project/dkms, dkms_framework.conf: mok_certificate=/var/lib/dkms/mok.pub), as Debian's
# and EPEL's dkms keep it.
DKMS_MOK_CERTIFICATE = "/var/lib/dkms/mok.pub"


def secure_boot_errors(state: dict, build, key_enrolled=False, platform: dict | None = None) -> list[str]:
    """Why a DKMS module would be refused at boot ([] when it would load).

    With Secure Boot on the kernel loads only modules signed with a key it
    trusts. DKMS signs with its own key, which the firmware trusts only once
    enrolled as a Machine Owner Key; Ubuntu's precompiled modules are signed by
    Canonical (NVIDIA driver installation guide, "Secure Boot"; Ubuntu's "UEFI
    Secure Boot" notes on DKMS). The key is where the platform's dkms keeps it
    (platform['dkms_mok_certificate']): Ubuntu's dkms signs with shim-signed's
    /var/lib/shim-signed/mok/MOK.der, dkms's own default is /var/lib/dkms/mok.pub.
    """
    if not state.get("secure_boot") or build != "dkms" or key_enrolled:
        return []
    certificate = (platform or {}).get("dkms_mok_certificate") or DKMS_MOK_CERTIFICATE
    return [
        "Secure Boot is on and DKMS builds modules the kernel refuses until their signing key is trusted: enroll "
        f"DKMS's key (mokutil --import {certificate}, confirm in the MOK manager at the next boot) and set "
        "nvidia_driver_secure_boot_key_enrolled: true, use nvidia_driver_build: precompiled where offered (signed "
        "modules), or turn Secure Boot off"
    ]


# ------------------------------------------------------- existing apt sources


def _norm_uri(uri) -> str:
    return str(uri or "").strip().rstrip("/")


def apt_sources(text: str) -> list[dict]:
    """Entries of the host's apt sources, from '#file PATH' followed by the file.

    One-line (.list: 'deb [signed-by=K] URI SUITE ...') and deb822 (.sources:
    'Types/URIs/Suites/Signed-By' stanzas). Each entry: file, uris, signed_by.
    """
    entries = []
    current = ""
    stanza: dict = {}

    def close_stanza():
        if stanza.get("uris"):
            entries.append({"file": current, "uris": stanza["uris"], "signed_by": stanza.get("signed-by", "")})
        stanza.clear()

    for raw in (text or "").splitlines():
        if raw.startswith("#file "):
            close_stanza()
            current = raw[len("#file ") :].strip()
            continue
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if current.endswith(".sources"):
            if not line.strip():
                close_stanza()
                continue
            if ":" in line and not line[0].isspace():
                key, value = line.split(":", 1)
                key = key.strip().lower()
                if key == "uris":
                    stanza["uris"] = [_norm_uri(uri) for uri in value.split()]
                elif key == "signed-by":
                    stanza["signed-by"] = value.strip()
                elif key == "enabled" and value.strip().lower() == "no":
                    stanza["uris"] = []
            continue
        match = re.match(r"^\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)", line)
        if match:
            options = dict(option.split("=", 1) for option in (match.group(1) or "").split() if "=" in option)
            entries.append(
                {"file": current, "uris": [_norm_uri(match.group(2))], "signed_by": options.get("signed-by", "")}
            )
    close_stanza()
    return entries


def existing_source_plan(text: str, uri, own_file, mode="reuse") -> dict:
    """What to do about sources of NVIDIA's repository that are not the role's.

    Two sources for the same URI with different Signed-By break apt for the whole
    host ("Conflicting values set for option Signed-By"; NVIDIA/cuda-repo-management
    issue #4), and cuda-keyring writes exactly such a source
    (/etc/apt/sources.list.d/cuda-<distro>-<arch>.list, signed-by
    /usr/share/keyrings/cuda-archive-keyring.gpg; NVIDIA/cuda-repo-management
    SIGNATURES.md). reuse: keep theirs, write none of the role's own;
    replace: remove their files (only files that hold nothing else) and write the role's.
    """
    target = _norm_uri(uri)
    entries = apt_sources(text)
    others = [entry for entry in entries if entry["file"] != own_file and target in entry["uris"]]
    files = sorted({entry["file"] for entry in others})
    plan = {"found": files, "reuse": False, "remove": [], "errors": []}
    if not others:
        return plan
    if mode == "reuse":
        plan["reuse"] = True
        return plan
    for file in files:
        foreign = [entry for entry in entries if entry["file"] == file and target not in entry["uris"]]
        if foreign or file == "/etc/apt/sources.list":
            plan["errors"].append(
                f"{file} carries NVIDIA's repository {target}/ beside other sources, so "
                "nvidia_driver_existing_source: replace cannot remove it: delete that line yourself, or set "
                "nvidia_driver_existing_source: reuse"
            )
        else:
            plan["remove"].append(file)
    return plan


# ------------------------------------------------------- repository signing key


def openpgp_fingerprints(armored: str) -> list[str]:
    """Fingerprints (upper-case hex) of the public keys and subkeys in an ASCII-armored key block.

    v4 keys: SHA-1 over 0x99, the two-byte body length and the public-key packet's body;
    v5/v6 keys: SHA-256 over 0x9A/0x9B and a four-byte length (RFC 4880 12.2, RFC 9580 5.5.4).
    Raises ValueError for text that is no armored public key block.
    """
    import base64
    import hashlib

    lines = (armored or "").strip().splitlines()
    try:
        begin = next(i for i, line in enumerate(lines) if line.strip() == "-----BEGIN PGP PUBLIC KEY BLOCK-----")
        end = next(i for i, line in enumerate(lines) if line.strip() == "-----END PGP PUBLIC KEY BLOCK-----")
    except StopIteration:
        raise ValueError("not an ASCII-armored public key block") from None
    body = lines[begin + 1 : end]
    blank = next((i for i, line in enumerate(body) if not line.strip()), -1)
    data_lines = [line.strip() for line in body[blank + 1 :] if line.strip() and not line.startswith("=")]
    try:
        data = base64.b64decode("".join(data_lines), validate=True)
    except ValueError:
        raise ValueError("the armored key block is not valid base64") from None
    fingerprints = []
    position = 0
    while position < len(data):
        header = data[position]
        if not header & 0x80:
            raise ValueError("the key block holds no OpenPGP packets")
        if header & 0x40:  # new format: tag in the low six bits, then a variable length
            tag = header & 0x3F
            first = data[position + 1]
            if first < 192:
                length, position = first, position + 2
            elif first < 224:
                length, position = ((first - 192) << 8) + data[position + 2] + 192, position + 3
            elif first == 255:
                length, position = int.from_bytes(data[position + 2 : position + 6], "big"), position + 6
            else:
                raise ValueError("partial-length packets do not occur in keys")
        else:  # old format: tag in bits 5-2, length type in bits 1-0
            tag = (header >> 2) & 0x0F
            size = {0: 1, 1: 2, 2: 4}.get(header & 0x03)
            if size is None:
                raise ValueError("indeterminate-length packets do not occur in keys")
            length = int.from_bytes(data[position + 1 : position + 1 + size], "big")
            position += 1 + size
        packet = data[position : position + length]
        position += length
        if tag in (6, 14) and packet:
            version = packet[0]
            if version == 4:
                digest = hashlib.sha1(b"\x99" + len(packet).to_bytes(2, "big") + packet, usedforsecurity=False)
            elif version in (5, 6):
                prefix = b"\x9a" if version == 5 else b"\x9b"
                digest = hashlib.sha256(prefix + len(packet).to_bytes(4, "big") + packet)
            else:
                continue
            fingerprints.append(digest.hexdigest().upper())
    if not fingerprints:
        raise ValueError("the key block holds no public key")
    return fingerprints


def key_fingerprint_errors(armored: str, expected, where: str) -> list[str]:
    """Why the repository key is not the one expected ([] when it is, or nothing is expected).

    expected: full fingerprints (40 or 64 hex digits) or key ids (their last 8 or 16), spaces
    allowed; the key passes when one of its (sub)key fingerprints matches one of them.
    """
    wanted = [str(item).replace(" ", "").upper() for item in (expected or []) if str(item).strip()]
    if not wanted:
        return []
    try:
        found = openpgp_fingerprints(armored)
    except ValueError as error:
        return [f"the signing key of {where} cannot be read: {error}"]
    if any(fingerprint.endswith(item) for fingerprint in found for item in wanted):
        return []
    return [
        f"the signing key of {where} has fingerprint(s) {', '.join(found)}, none of "
        f"nvidia_driver_repo_key_fingerprints ({', '.join(wanted)}): a key that is not the repository's own would "
        "make apt or dnf trust whatever it signs. Check the key source (nvidia_driver_repo_key, "
        "nvidia_driver_repo_key_file, nvidia_driver_repo_key_url), or list this key's fingerprint"
    ]


# ------------------------------------------------------------ RHEL: EPEL, CRB


def rhel_repo_plan(platform: dict, distribution, arch, enabled_repos: str, dkms_available, build, allow=True) -> dict:
    """Which repositories dkms needs on RHEL and its rebuilds, and whether they may be enabled.

    NVIDIA's packages for RHEL 8/9 build with dkms, which comes from EPEL; EPEL on
    9 builds against CodeReady Builder (crb on Rocky/Alma, codeready-builder-for-rhel-9-ARCH-rpms
    on RHEL) (NVIDIA driver installation guide, Red Hat Enterprise Linux, "Enable
    the network repository" / "Satisfy third-party package dependency"; NVIDIA/gpu-driver-container
    rhel9/install.sh enables crb on Rocky and installs EPEL).
    """
    plan = {"install_epel": False, "enable": [], "tool": "", "errors": []}
    if platform.get("family") != "dnf" or build != "dkms" or dkms_available:
        return plan
    enabled = {
        line.split()[0]
        for line in (enabled_repos or "").splitlines()
        if line.strip() and not line.startswith("repo id")
    }
    rhel = str(distribution) == "RedHat"
    crb = platform.get("crb_repo", {})
    crb_id = (crb.get("rhel", "") if rhel else crb.get("rebuild", "")).replace("{arch}", str(arch))
    plan["install_epel"] = not any(repo == "epel" or repo.startswith("epel-") for repo in enabled)
    plan["enable"] = [crb_id] if crb_id and crb_id not in enabled else []
    plan["tool"] = "subscription-manager" if rhel else "dnf"
    if (plan["install_epel"] or plan["enable"]) and not allow:
        wanted = (["EPEL"] if plan["install_epel"] else []) + plan["enable"]
        plan["errors"].append(
            f"dkms is neither installed nor available on {platform.get('name', 'this host')}: it comes from EPEL"
            f"{' (which needs ' + crb_id + ')' if crb_id else ''}, and nvidia_driver_enable_epel is false, so the role "
            f"may not enable {', '.join(wanted)}. Enable them yourself (or mirror dkms into an enabled repository), "
            "or set nvidia_driver_enable_epel: true"
        )
    return plan


# ------------------------------------------------------------------- rebooting


def is_controller(connection, host_machine_id="", controller_machine_id="") -> bool:
    """Whether the managed host is the machine Ansible runs on (never reboot it).

    True for the local connection, and for any connection (ssh to localhost, a
    delegated inventory name) that lands on the controller's own machine id.
    """
    if str(connection or "").split(".")[-1] == "local":
        return True
    host_id = str(host_machine_id or "").strip()
    return bool(host_id) and host_id == str(controller_machine_id or "").strip()


def reboot_decision(
    state: dict, installed_version="", defer=False, is_controller=False, busy_units=(), stop_busy=False
) -> dict:
    """Whether the host must reboot to run the installed driver, and what to do.

    Needed when nouveau is loaded (it holds the GPUs), or when the installed
    module's version differs from the loaded one (or none is loaded yet).
    Never on hosts without a GPU. Never on the controller; deferred on request.
    Never while a training unit (busy_units) runs, unless stop_busy: then the
    reboot stops them first (they are listed in stop_units).
    """
    loaded = state.get("loaded_version") or ""
    installed = installed_version or state.get("module_on_disk_version") or ""
    busy = sorted(set(busy_units or []))
    reasons = []
    if state.get("gpu_present"):
        if state.get("nouveau_loaded"):
            reasons.append("nouveau is loaded")
        if installed and not loaded:
            reasons.append(f"driver {installed} is installed but no nvidia module is loaded")
        elif installed and loaded and version_compare(installed, loaded) != 0:
            reasons.append(f"driver {installed} is installed but {loaded} is loaded")
    required = bool(reasons)
    if not required:
        action = "none"
    elif is_controller:
        action = "controller"
    elif defer:
        action = "deferred"
    elif busy and not stop_busy:
        action = "busy"
    else:
        action = "reboot"
    return {
        "required": required,
        "reasons": reasons,
        "action": action,
        "busy_units": busy,
        "stop_units": busy if action == "reboot" else [],
    }


class FilterModule:
    """Filters for the nvidia_driver role (prefix nvidia_driver_)."""

    def filters(self):
        functions = {
            "valid_branch": valid_branch,
            "pin_in_branch": pin_in_branch,
            "host_state": host_state,
            "parse_probe": parse_probe,
            "parse_nvidia_smi_csv": parse_nvidia_smi_csv,
            "verify": verify,
            "plan_errors": plan_errors,
            "package_names": package_names,
            "package_specs": package_specs,
            "apt_pin_version": apt_pin_version,
            "fabric_manager": fabric_manager,
            "fabric_manager_errors": fabric_manager_errors,
            "fabric_manager_held_names": fabric_manager_held_names,
            "existing_source_plan": existing_source_plan,
            "rhel_repo_plan": rhel_repo_plan,
            "versionlock_plan": package_lock_plan,
            "dnf_lock_plan": driver_lock_plan,
            "resolved_packages": resolved_packages,
            "installed_driver_version": installed_driver_version,
            "installed_package_set": installed_package_set,
            "reboot_decision": reboot_decision,
            "is_controller": is_controller,
            "kernel_header_packages": kernel_header_packages,
            "dkms_kernel_pin_packages": dkms_kernel_pin_packages,
            "valid_kernel": valid_kernel,
            "marker_prefix": marker_prefix,
            "driver_marker": driver_marker,
            "simulated_install_errors": simulated_install_errors,
            "simulated_driver_version": simulated_driver_version,
            "planned_driver_version": planned_driver_version,
            "fabric_manager_availability_errors": fabric_manager_availability_errors,
            "carried_versions": carried_versions,
            "availability_errors": availability_errors,
            "missing_packages": missing_packages,
            "unbuilt_kernels": unbuilt_kernels,
            "parse_units": parse_units,
            "module_type_errors": module_type_errors,
            "secure_boot_errors": secure_boot_errors,
            "openpgp_fingerprints": openpgp_fingerprints,
            "key_fingerprint_errors": key_fingerprint_errors,
            "installed_packages": installed_packages,
            "install_plan": install_plan,
            "boot_kernel": boot_kernel,
            "kernel_header_metapackages": kernel_header_metapackages,
            "boot_module_errors": boot_module_errors,
        }
        return {f"nvidia_driver_{name}": _wrap(function) for name, function in functions.items()}


def _wrap(function):
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ValueError as error:
            from ansible.errors import AnsibleFilterError  # only inside Ansible

            raise AnsibleFilterError(f"{function.__name__}: {error}") from error

    wrapped.__name__ = function.__name__
    wrapped.__doc__ = function.__doc__
    return wrapped
