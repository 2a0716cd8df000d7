"""Driver versions, branches and pins of the nvidia_driver role, compared as numbers, never as strings.

Also the kernel release as `uname -r` prints it, which the package and boot decisions check.
"""

from __future__ import annotations

import re

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


def upstream_version(version) -> str:
    """'3:580.95.05-1.el9' -> '580.95.05' (epoch and packaging revision dropped)."""
    text = str(version).strip().split(":", 1)[-1]
    version_tuple(text)
    return re.split(r"[-~+]", text, maxsplit=1)[0]


KERNEL_RE = re.compile(r"^[0-9]+\.[0-9]+[A-Za-z0-9._+~-]*$")


def valid_kernel(kernel) -> bool:
    """A kernel release as `uname -r` prints it (6.1.0-50-amd64, 5.14.0-427.13.1.el9_4.x86_64)."""
    return isinstance(kernel, str) and bool(KERNEL_RE.match(kernel))
