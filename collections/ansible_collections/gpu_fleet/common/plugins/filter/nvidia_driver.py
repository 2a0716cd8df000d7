"""nvidia_driver_* filters: the nvidia_driver role's decision logic, from module_utils/nvidia_driver."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.boot import (
    boot_kernel,
    boot_module_errors,
    is_controller,
    reboot_decision,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.compatibility import (
    module_type_errors,
    secure_boot_errors,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.dnf_locks import (
    dnf_lock_plan,
    versionlock_plan,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.fabric_manager import (
    fabric_manager,
    fabric_manager_availability_errors,
    fabric_manager_errors,
    fabric_manager_held_names,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.installed import (
    install_plan,
    installed_driver_version,
    installed_package_set,
    installed_packages,
    unbuilt_kernels,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.nvidia_smi import (
    parse_nvidia_smi_csv,
    verify,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.package_index import (
    availability_errors,
    carried_versions,
    missing_packages,
    planned_driver_version,
    resolved_packages,
    simulated_driver_version,
    simulated_install_errors,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.packages import (
    apt_pin_version,
    dkms_kernel_pin_packages,
    driver_marker,
    kernel_header_metapackages,
    kernel_header_packages,
    marker_prefix,
    package_names,
    package_specs,
    plan_errors,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.probe import (
    host_state,
    parse_probe,
    parse_units,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.repositories import (
    existing_source_plan,
    rhel_repo_plan,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.signing_key import (
    key_fingerprint_errors,
    openpgp_fingerprints,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import (
    pin_in_branch,
    valid_branch,
    valid_kernel,
)


class FilterModule:
    """Filters for the nvidia_driver role (prefix nvidia_driver_)."""

    def filters(self):
        # Only ValueError: anything else a function raises is a fault of its own, left as a traceback.
        return prefixed(
            "nvidia_driver_",
            (
                valid_branch,
                pin_in_branch,
                host_state,
                parse_probe,
                parse_nvidia_smi_csv,
                verify,
                plan_errors,
                package_names,
                package_specs,
                apt_pin_version,
                fabric_manager,
                fabric_manager_errors,
                fabric_manager_held_names,
                existing_source_plan,
                rhel_repo_plan,
                versionlock_plan,
                dnf_lock_plan,
                resolved_packages,
                installed_driver_version,
                installed_package_set,
                reboot_decision,
                is_controller,
                kernel_header_packages,
                dkms_kernel_pin_packages,
                valid_kernel,
                marker_prefix,
                driver_marker,
                simulated_install_errors,
                simulated_driver_version,
                planned_driver_version,
                fabric_manager_availability_errors,
                carried_versions,
                availability_errors,
                missing_packages,
                unbuilt_kernels,
                parse_units,
                module_type_errors,
                secure_boot_errors,
                openpgp_fingerprints,
                key_fingerprint_errors,
                installed_packages,
                install_plan,
                boot_kernel,
                kernel_header_metapackages,
                boot_module_errors,
            ),
            (ValueError,),
        )
