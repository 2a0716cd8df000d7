"""The fabric manager of NVSwitch and NVLink 5 hosts: whether it is needed, its packages at exactly the
driver's version, and whether the source carries them."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.package_index import (
    parse_package_rows,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.packages import (
    fill_branch,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import (
    upstream_version,
    valid_branch,
    version_compare,
    version_tuple,
)


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
    versioned = [fill_branch(template, branch) for template in _branch_entry(offer["packages"], branch)]
    nvlink5 = bool(inventory.get("nvlink5_present"))
    unversioned = list(offer.get("nvlink5_packages", [])) if nvlink5 else []
    # NVLink 5 also needs libnvsdm at the driver's version, built for x86_64 only
    # (NVIDIA/gpu-driver-container ubuntu24.04/install.sh and rhel9/install.sh, nvsdm_install:
    # "libnvsdm packages are not available for arm64"; libnvsdm from 580, libnvsdm-<branch>
    # from 560: ubuntu24.04/precompiled/local-repo.sh, nvsdm_download).
    nvsdm = _branch_entry(offer.get("nvsdm_packages", {}), branch) if offer.get("nvsdm_packages") else None
    if nvlink5 and nvsdm and str(arch) in ("x86_64", "amd64"):
        versioned += [fill_branch(template, branch) for template in nvsdm]
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
