"""Read-only probes of the nvidia_driver role: GPUs, modules on disk, host packages, apt sources, package sources."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nvidia_driver_probe
short_description: Observe what the nvidia_driver role decides from, read-only
description:
  - One concern per call, each answered as the C(#section) text that the role's
    C(gpu_fleet.common.nvidia_driver_*) filters read (the format of the shell probes this module replaces, so
    outputs captured on real hosts stay valid test inputs).
  - C(hardware) reads the PCI functions from sysfs, the loaded module from /proc, Secure Boot, NVLink 5 switch
    trays and (on the host's own root only) the nvidia module on disk with C(modinfo).
  - C(modules) reads the nvidia module's version on disk for each of O(kernels) (C(none) when absent).
  - C(host_packages) reads the kernel the next boot starts (C(grubby), GRUB_DEFAULT, /boot), the installed
    kernel image packages and the installed versions of O(packages).
  - C(apt_sources) reads the host's apt source files, each after a C(#file PATH) line.
  - C(sources) reads what the package sources carry, from the host's sources or, with O(repo_url), from
    NVIDIA's repository read into a private temporary apt state (nothing under /etc/apt or /var/lib/apt is
    written), and simulates the apt install of O(simulate) under O(pin).
  - Commands run as argv lists, never through a shell. Nothing on the host changes; C(changed) is always false.
options:
  concern:
    type: str
    required: true
    choices: [hardware, modules, host_packages, apt_sources, sources]
    description: What to observe.
  root:
    type: path
    default: /
    description:
      - Root of the files read (sysfs, /proc, /boot, /etc/default/grub, /etc/apt, /var/lib/apt). The tests
        point it at fixture trees; commands always answer for the running host.
  kernels:
    type: list
    elements: str
    default: []
    description: Kernel releases to read the module for (C(modules)).
  family:
    type: str
    choices: [apt, dnf]
    default: apt
    description: The package manager (C(host_packages), C(sources)).
  packages:
    type: list
    elements: str
    default: []
    description: Packages whose installed versions are read (C(host_packages)).
  headers:
    type: list
    elements: str
    default: []
    description: Packages reported present or missing (C(sources)).
  prefix:
    type: str
    default: ''
    description: Name prefix of the driver packages whose versions are listed (C(sources)).
  repo_url:
    type: str
    default: ''
    description: "NVIDIA's repository folder; empty: the host's own sources (C(sources))."
  key_url:
    type: str
    default: ''
    description: "Where NVIDIA's repository key is downloaded; empty: O(key) holds it."
  key:
    type: str
    default: ''
    description: NVIDIA's repository key itself (armored), used when O(key_url) is empty.
  fabric_manager:
    type: list
    elements: str
    default: []
    description: Fabric manager packages whose versions are listed.
  simulate:
    type: list
    elements: str
    default: []
    description: Driver packages whose apt install is simulated (apt only).
  pin:
    type: str
    default: ''
    description: The role's apt preferences file, rendered, that the simulation uses.
  pin_file:
    type: str
    default: /etc/apt/preferences.d/nvidia-driver.pref
    description: Where the host keeps the role's preferences file (O(pin) replaces it in the simulation).
attributes:
  check_mode: {support: full, description: Read-only; runs the same in check mode.}
author: gpu-fleet maintainers
"""

EXAMPLES = r"""
- name: Read NVIDIA PCI devices, the loaded module and nouveau from sysfs and /proc
  gpu_fleet.common.nvidia_driver_probe:
    concern: hardware
  register: probe

- name: Decide from it
  ansible.builtin.set_fact:
    state: "{{ probe.report | gpu_fleet.common.nvidia_driver_host_state }}"

- name: Read the module built for each kernel
  gpu_fleet.common.nvidia_driver_probe:
    concern: modules
    kernels: [6.1.0-47-cloud-amd64, 6.1.0-57-cloud-amd64]
"""

RETURN = r"""
report:
  description:
    - The observation as C(#section) text (C(modules) - lines C(KERNEL VERSION); C(apt_sources) - C(#file PATH)
      then the file), for the role's filters.
  type: str
  returned: always
rc:
  description:
    - C(sources) only - 3 when the repository key could not be downloaded, 4 when NVIDIA's repository could not be
      read; 0 otherwise. The role reports a non-zero rc with O(repo_url) and stderr.
  type: int
  returned: always
stderr:
  description: What the commands printed besides the report (apt-get update, downloads, warnings).
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.hardware_probe import (
    hardware_report,
    modules_report,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.host_commands import module_runner
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.host_packages_probe import (
    apt_sources_report,
    host_packages_report,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.sources_probe import (
    DEFAULT_PIN_FILE,
    SourcesQuery,
    sources_report,
)

ARGUMENT_SPEC = {
    "concern": {
        "type": "str",
        "required": True,
        "choices": ["hardware", "modules", "host_packages", "apt_sources", "sources"],
    },
    "root": {"type": "path", "default": "/"},
    "kernels": {"type": "list", "elements": "str", "default": []},
    "family": {"type": "str", "choices": ["apt", "dnf"], "default": "apt"},
    "packages": {"type": "list", "elements": "str", "default": []},
    "headers": {"type": "list", "elements": "str", "default": []},
    "prefix": {"type": "str", "default": ""},
    "repo_url": {"type": "str", "default": ""},
    "key_url": {"type": "str", "default": ""},
    "key": {"type": "str", "default": ""},
    "fabric_manager": {"type": "list", "elements": "str", "default": []},
    "simulate": {"type": "list", "elements": "str", "default": []},
    "pin": {"type": "str", "default": ""},
    "pin_file": {"type": "str", "default": DEFAULT_PIN_FILE},
}


def observe(run, params: dict) -> dict:
    """The module's result for `params`, with `run` running the commands."""
    concern, root = params["concern"], params["root"]
    result = {"changed": False, "rc": 0, "stderr": ""}
    if concern == "hardware":
        result["report"] = hardware_report(run, root)
    elif concern == "modules":
        result["report"] = modules_report(run, params["kernels"])
    elif concern == "host_packages":
        result["report"] = host_packages_report(run, params["family"], params["packages"], root)
    elif concern == "apt_sources":
        result["report"] = apt_sources_report(root)
    else:
        query = SourcesQuery(
            **{name: params[name] for name in ("family", "prefix", "headers", "repo_url", "key_url", "key")},
            **{name: params[name] for name in ("fabric_manager", "simulate", "pin", "pin_file")},
        )
        found = sources_report(run, query, root)
        result.update(report=found.report, rc=found.rc, stderr=found.stderr)
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.exit_json(**observe(module_runner(module), module.params))


if __name__ == "__main__":
    main()
