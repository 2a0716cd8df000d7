"""What a host has installed, and whether the driver install changes it (or waits for training)."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.packages import (
    driver_marker,
    fill_branch,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import (
    upstream_version,
    version_matches,
    version_tuple,
)


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
    marker = fill_branch(
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
