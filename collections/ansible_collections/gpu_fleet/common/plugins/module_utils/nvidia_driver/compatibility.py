"""Which GPUs can run which kernel modules and branches, and what Secure Boot refuses."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import (
    valid_branch,
)

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
