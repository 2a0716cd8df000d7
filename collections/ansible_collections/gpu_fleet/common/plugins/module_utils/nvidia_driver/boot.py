"""The kernel the next boot starts, and whether (and when) the host reboots into the installed driver."""

from __future__ import annotations

import re
import shlex

from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.installed import (
    unbuilt_kernels,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.probe import (
    parse_probe,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import (
    valid_kernel,
    version_compare,
)


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
