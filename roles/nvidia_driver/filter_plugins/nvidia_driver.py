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
Ansible at module level, so tests import this file directly.
"""

from __future__ import annotations

import re

NVIDIA_VENDOR = 0x10DE
# PCI class codes (class/subclass/prog-if as sysfs shows them, e.g. 0x030200).
CLASS_VGA = 0x0300
CLASS_3D = 0x0302
CLASS_BRIDGE_OTHER = 0x0680  # NVSwitch reports 0x068000

BRANCH_RE = re.compile(r"^[1-9][0-9]{2}$")
# NVIDIA driver versions: 580.95.05, 535.183.01, 550.54.14; some old ones 390.157.
PIN_RE = re.compile(r"^[1-9][0-9]{2}\.[0-9]{1,3}(\.[0-9]{1,3})?$")
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
        if line.startswith("#") and re.fullmatch(r"#[a-z_]+", line.strip()):
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


def _fmt(template: str, branch) -> str:
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


def package_names(platform: dict, source, branch, kernel_modules, build, flavour) -> list[str]:
    """The packages to install, branch filled in; versions are pinned separately."""
    errors = plan_errors(platform, source, branch, "", kernel_modules, build, flavour)
    if errors:
        raise ValueError("; ".join(errors))
    templates = platform["sources"][source]["packages"][kernel_modules][build][flavour]
    return [_fmt(template, branch) for template in templates]


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


def fabric_manager(inventory: dict, mode, platform: dict, source, branch, driver_version) -> dict:
    """Whether and which fabric manager to install: exactly the driver's version.

    mode: 'auto' (only where an NVSwitch is present), 'always', 'never'.
    driver_version: the installed driver's version (or the pin); the fabric
    manager must equal it, or it refuses to start.
    """
    wanted = mode == "always" or (mode == "auto" and bool(inventory.get("nvswitch_present")))
    template = platform.get("sources", {}).get(source, {}).get("fabric_manager", "")
    if not wanted:
        return {"needed": False, "package": "", "version": "", "service": "", "reason": "no NVSwitch"}
    if not template:
        raise ValueError(
            f"nvidia_driver_source {source} on {platform.get('name', 'this platform')} carries no fabric manager; "
            "NVSwitch hosts need nvidia_driver_source: cuda"
        )
    if not driver_version:
        raise ValueError("the fabric manager version follows the driver's, and no driver version is known yet")
    version = upstream_version(driver_version)
    return {
        "needed": True,
        "package": _fmt(template, branch),
        "version": version,
        "service": platform.get("fabric_manager_service", "nvidia-fabricmanager"),
        "reason": "NVSwitch present" if inventory.get("nvswitch_present") else "nvidia_driver_fabric_manager is always",
    }


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


def reboot_decision(state: dict, installed_version="", defer=False, is_controller=False) -> dict:
    """Whether the host must reboot to run the installed driver, and what to do.

    Needed when nouveau is loaded (it holds the GPUs), or when the installed
    module's version differs from the loaded one (or none is loaded yet).
    Never on hosts without a GPU. Never on the controller; deferred on request.
    """
    loaded = state.get("loaded_version") or ""
    installed = installed_version or state.get("module_on_disk_version") or ""
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
    else:
        action = "reboot"
    return {"required": required, "reasons": reasons, "action": action}


class FilterModule:
    """Filters for the nvidia_driver role (prefix nvidia_driver_)."""

    def filters(self):
        functions = {
            "version_tuple": version_tuple,
            "version_compare": version_compare,
            "version_branch": version_branch,
            "valid_branch": valid_branch,
            "valid_pin": valid_pin,
            "pin_in_branch": pin_in_branch,
            "version_matches": version_matches,
            "host_state": host_state,
            "parse_nvidia_smi_csv": parse_nvidia_smi_csv,
            "parse_proc_version": parse_proc_version,
            "verify": verify,
            "plan_errors": plan_errors,
            "package_names": package_names,
            "package_specs": package_specs,
            "apt_pin_version": apt_pin_version,
            "fabric_manager": fabric_manager,
            "resolved_packages": resolved_packages,
            "installed_driver_version": installed_driver_version,
            "installed_package_set": installed_package_set,
            "upstream_version": upstream_version,
            "reboot_decision": reboot_decision,
            "is_controller": is_controller,
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
