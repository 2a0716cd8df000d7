"""dnf versionlock entries of the nvidia_driver role: which go before an install, which come after.

The versionlock plugin (dnf-plugins-core, plugins/versionlock.py) reads each line of its lock list
as a package spec and excludes every other version of a locked name from transactions, so a lock
left at 580 by an earlier pin hides 590 from `dnf module switch-to nvidia-driver:590-open` and
from the install. `dnf versionlock add` writes `NAME-EPOCH:VERSION-RELEASE.*` of the installed
package (else of every available one); `dnf versionlock list` prints the lines as they are; a
line may also be a raw spec (`--raw`, e.g. `nvidia-driver-cuda-3:580.*`) or an exclude (`!` in
front: that version only is hidden).

The role's own entries are those on a package name it installs and holds on the platform (any
module type or flavour, the fabric manager of any branch): they follow the target. Entries on
other NVIDIA packages that carry the driver's version (NVIDIA's guide locks `*nvidia*580*`:
nvidia-kmod-common, nvidia-driver-cuda-libs, ...) are not the role's: one at another version
makes dnf refuse the driver's dependencies, so it is refused before any change, naming it.
"""

from __future__ import annotations

import fnmatch
import re

BRANCH_RE = re.compile(r"^[1-9][0-9]{2}$")
# dnf writes EPOCH:VERSION-RELEASE; raw specs may leave out the epoch or the release.
EPOCH_SPEC_RE = re.compile(r"^(?P<name>.+)-(?P<epoch>\d+):(?P<version>[^-]+?)(?:-(?P<release>[^-]+))?$")
NVR_SPEC_RE = re.compile(r"^(?P<name>.+)-(?P<version>\d[^-]*)-(?P<release>[^-]+)$")
NV_SPEC_RE = re.compile(r"^(?P<name>.+)-(?P<version>\d[^-]*)$")
# Packages that carry the driver's version in NVIDIA's repositories for RHEL (kmod-nvidia-*,
# nvidia-*, libnvidia-*, xorg-x11-nvidia*, cuda-drivers*, libnvsdm*).
NVIDIA_NAME_RE = re.compile(r"nvidia|^cuda-drivers|^libnvsdm")
GLOB_CHARS = "*?["


def parse_locklist(text: str) -> list[dict]:
    """The entries of `dnf versionlock list` (comments and blank lines skipped).

    Each: entry (the line), exclude (a `!` line), name, epoch, version, release ('' where the
    spec has none, or name '' where it names no version at all, e.g. a bare `bash`).
    """
    entries = []
    for line in (text or "").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        spec = entry[1:] if entry.startswith("!") else entry
        found = EPOCH_SPEC_RE.match(spec) or NVR_SPEC_RE.match(spec) or NV_SPEC_RE.match(spec)
        parts = found.groupdict() if found else {}
        entries.append(
            {
                "entry": entry,
                "exclude": entry.startswith("!"),
                "name": parts.get("name") or "",
                "epoch": parts.get("epoch") or "",
                "version": parts.get("version") or "",
                "release": parts.get("release") or "",
            }
        )
    return entries


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("-")[0]))


def is_driver_version(version) -> bool:
    """A driver version (580.95.05, 580.*), not a package's own numbering (the toolkit's 1.17.8)."""
    found = re.match(r"^(\d+)", str(version or ""))
    return bool(found) and int(found.group(1)) >= 100


def matches_target(version, branch, pin="") -> bool:
    """Whether a lock's version holds the target: the pin exactly, else any version of the branch.

    A raw spec's glob (580.*, 580.95.*) matches when the pin fits it, or for a branch when its
    leading number is the branch.
    """
    version = str(version or "")
    if not version:
        return False
    if any(char in version for char in GLOB_CHARS):
        if pin:
            return fnmatch.fnmatch(str(pin), version)
        return version.split(".")[0] == str(branch)
    if pin:
        return _numbers(version) == _numbers(str(pin))
    return _numbers(version)[:1] == (int(str(branch)),) if BRANCH_RE.match(str(branch)) else False


def _name_pattern(template: str) -> str | None:
    """A package-name template of the platform data as a regular expression ({branch}: any branch)."""
    if "{kernel}" in template:
        return None  # Ubuntu's precompiled modules: apt only, never locked by dnf
    return re.escape(template).replace(re.escape("{branch}"), "[1-9][0-9]{2}")


def _templates(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [name for value in node.values() for name in _templates(value)]
    if isinstance(node, list):
        return [name for value in node for name in _templates(value)]
    return []


def own_name_patterns(platform: dict) -> list[str]:
    """Every package name the role installs and holds on the platform, as patterns.

    The driver packages of every source, module type, build and flavour (a change of module type
    or flavour leaves the earlier names' locks behind) and the fabric manager set of every branch.
    """
    patterns = set()
    for offer in (platform.get("sources") or {}).values():
        fabric = offer.get("fabric_manager") or {}
        for template in _templates(offer.get("packages") or {}) + _templates(
            [fabric.get("packages") or {}, fabric.get("nvsdm_packages") or {}]
        ):
            pattern = _name_pattern(template)
            if pattern:
                patterns.add(pattern)
    return sorted(patterns)


def _is_own(name: str, patterns) -> bool:
    return any(re.fullmatch(pattern, name) for pattern in patterns)


def _target_words(branch, pin) -> str:
    return f"nvidia_driver_version {pin}" if pin else f"nvidia_driver_branch {branch}"


def dnf_lock_plan(list_text: str, platform: dict, branch, pin="") -> dict:
    """What to do with the host's version locks before the driver changes, decided before any change.

    delete: the role's own entries (own_name_patterns) that hold a version other than the target
    (the pin, else the branch); they go before `dnf module switch-to` and the install. errors: an
    exclude of the target on the role's packages, and locks of other NVIDIA packages that carry the
    driver's version off the target: dnf would refuse the driver's dependencies with them.
    """
    patterns = own_name_patterns(platform)
    delete, foreign, excluded = [], [], []
    for lock in parse_locklist(list_text):
        name, version = lock["name"], lock["version"]
        if not name or not is_driver_version(version):
            continue
        on_target = matches_target(version, branch, pin)
        if _is_own(name, patterns):
            if lock["exclude"]:
                if on_target:
                    excluded.append(lock["entry"])
            elif not on_target:
                delete.append(lock["entry"])
        elif NVIDIA_NAME_RE.search(name) and not lock["exclude"] and not on_target:
            foreign.append(lock["entry"])
    errors = []
    target = _target_words(branch, pin)
    if excluded:
        errors.append(
            f"dnf versionlock excludes the target driver ({', '.join(excluded)}) for {target}: dnf would not "
            f"install it. Remove the exclude (dnf versionlock delete '{excluded[0].lstrip('!')}') or choose "
            "another version"
        )
    if foreign:
        errors.append(
            f"dnf versionlock holds NVIDIA packages the role does not manage at another driver than {target} "
            f"({', '.join(foreign)}): dnf would refuse the driver's dependencies at the target. Remove those locks "
            f"(dnf versionlock delete {' '.join(repr(entry) for entry in foreign)}) and run again; the role locks "
            "its own packages at the target itself"
        )
    return {"delete": delete, "errors": errors}


def versionlock_plan(list_text: str, names, branch, pin="") -> dict:
    """Locks of the given package names: the entries to delete before their install, the specs to add after.

    delete: entries of these names that hold another version than the target (the pin, else the
    branch; excludes are left alone). add: each name without an entry on the target, as
    `NAME-PIN` (dnf locks the installed package of that version) or, for a branch, the bare name
    (dnf locks the version the install left, so the host does not drift inside the branch).
    """
    wanted = [str(name) for name in names or []]
    on_target = set()
    delete = []
    for lock in parse_locklist(list_text):
        if lock["exclude"] or lock["name"] not in wanted:
            continue
        if matches_target(lock["version"], branch, pin):
            on_target.add(lock["name"])
        else:
            delete.append(lock["entry"])
    add = [f"{name}-{pin}" if pin else name for name in wanted if name not in on_target]
    return {"delete": delete, "add": add}
