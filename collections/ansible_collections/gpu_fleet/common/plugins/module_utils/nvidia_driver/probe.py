"""What a host reports about its GPUs, from the role's probe script.

The probe prints '#section' parts: NVIDIA PCI functions from sysfs, /proc/driver/nvidia/version,
/proc/modules, the module on disk, Secure Boot, NVLink 5 switch trays; and systemd's units.
"""

from __future__ import annotations

import re

NVIDIA_VENDOR = 0x10DE
# PCI class codes (class/subclass/prog-if as sysfs shows them, e.g. 0x030200).
CLASS_VGA = 0x0300
CLASS_3D = 0x0302
CLASS_BRIDGE_OTHER = 0x0680  # NVSwitch reports 0x068000


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


def parse_units(text: str) -> list[str]:
    """Unit names from `systemctl list-units --plain --no-legend` lines."""
    units = []
    for line in (text or "").splitlines():
        parts = line.split()
        if parts and "." in parts[0]:
            units.append(parts[0])
    return sorted(set(units))
