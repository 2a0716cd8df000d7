"""What the package sources carry and what a simulated install would give, read before any change."""

from __future__ import annotations

import re

from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.packages import (
    driver_marker,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import (
    upstream_version,
    valid_branch,
    version_matches,
    version_tuple,
)


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
