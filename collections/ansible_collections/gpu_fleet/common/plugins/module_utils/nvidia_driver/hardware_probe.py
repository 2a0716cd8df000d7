"""The host's GPUs as sysfs and /proc show them, and the nvidia module on disk (read-only).

Reads the PCI functions from sysfs, the loaded module from /proc and the module on disk with
modinfo. `root` is the root of the tree ("/" on hosts); the tests point it at fixture trees.
The text is what probe.host_state reads (the '#section' format of the former shell probe, so the
outputs captured on real hosts stay valid inputs).
"""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.host_commands import (
    Report,
    read_text,
    under_root,
)

# The SecureBoot EFI variable: 4 attribute bytes, then 1 when Secure Boot is on (UEFI spec, global variable GUID).
SECURE_BOOT_VARIABLE = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_ATTRIBUTE_BYTES = 4
# Debian's own packages name the module nvidia-current (NVIDIA's: nvidia).
MODULE_NAMES = ("nvidia", "nvidia-current")


def is_host_root(root: str) -> bool:
    """Whether `root` is the host's own root: only there do modinfo's answers belong to the tree."""
    return (root or "/").rstrip("/") == ""


def pci_functions(root: str) -> str:
    """Lines 'ADDRESS VENDOR DEVICE CLASS', one per PCI function with a readable vendor."""
    lines = []
    devices = under_root(root, "sys/bus/pci/devices")
    for device in sorted(devices.glob("*")) if devices.is_dir() else []:
        vendor = device / "vendor"
        if not vendor.is_file():
            continue
        fields = [(read_text(device / name) or "").rstrip("\n") for name in ("vendor", "device", "class")]
        lines.append(" ".join([device.name, *fields]) + "\n")
    return "".join(lines)


def secure_boot(root: str) -> str:
    """'1' when Secure Boot is on, '0' when off, '' without the EFI variable."""
    try:
        data = under_root(root, SECURE_BOOT_VARIABLE).read_bytes()
    except OSError:
        return ""
    return str(data[EFI_ATTRIBUTE_BYTES]) if len(data) > EFI_ATTRIBUTE_BYTES else ""


def nvlink5_devices(root: str) -> list[str]:
    """InfiniBand devices whose VPD holds SW_MNG.

    NVLink 5 switch trays: an InfiniBand device whose VPD holds SW_MNG (NVIDIA/gpu-driver-container,
    _assert_nvlink5_system).
    """
    found = []
    for vpd in sorted(under_root(root, "sys/class/infiniband").glob("*/device/vpd")):
        try:
            if b"SW_MNG" in vpd.read_bytes():
                found.append(vpd.parent.parent.name)
        except OSError:
            continue
    return found


def module_version(run, kernel: str = "") -> str:
    """The nvidia module's version on disk (for `kernel`, else the running one); '' when absent."""
    for name in MODULE_NAMES:
        rc, out, _ = run(["modinfo", *(["-k", kernel] if kernel else []), "-F", "version", name])
        if rc == 0:
            return out.rstrip("\n")
    return ""


def hardware_report(run, root: str = "/") -> str:
    """Everything probe.host_state reads, as '#section' text."""
    report = Report()
    report.section("pci")
    report.add(pci_functions(root))
    report.section("driver_version")
    report.add(read_text(under_root(root, "proc/driver/nvidia/version")))
    report.section("modules")
    report.add(read_text(under_root(root, "proc/modules")))
    report.section("secure_boot")
    report.add(secure_boot(root))
    report.section("nvlink5")
    report.add("".join(f"{name}\n" for name in nvlink5_devices(root)))
    report.section("module_on_disk")
    # modinfo reads the running host's /lib/modules: on a fixture tree it would describe this machine.
    if is_host_root(root):
        report.add(module_version(run))
    return report.text()


def modules_report(run, kernels: list[str]) -> str:
    """Lines 'KERNEL VERSION': the nvidia module's version on disk for each kernel ('none' when absent)."""
    return "".join(f"{kernel} {module_version(run, kernel) or 'none'}\n" for kernel in kernels)
