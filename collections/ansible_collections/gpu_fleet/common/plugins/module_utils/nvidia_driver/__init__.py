"""Decision logic of the nvidia_driver role, as pure functions, one concern per module.

Everything the role decides from what a host reports lives here, so that it is tested with
pytest against recorded outputs (tests/fixtures/nvidia/) rather than only on machines with a
GPU:

- versions: version comparison (as numbers, never as strings), branches, pins, kernel releases;
- probe: NVIDIA PCI devices from sysfs, /proc/driver/nvidia/version, /proc/modules, units;
- nvidia_smi: `nvidia-smi --format=csv` and the verification of the running driver;
- packages: the package set per platform, its pins, the kernel headers DKMS needs;
- package_index: what the sources carry, what a simulated install gives, the planned version;
- installed: what the host has installed, and whether the install changes it;
- fabric_manager: the fabric manager choice for NVSwitch and NVLink 5 hosts;
- dnf_locks: dnf versionlock entries before and after an install;
- compatibility: which GPUs run which kernel modules and branches, Secure Boot;
- repositories, signing_key: the host's apt and dnf repositories, the repository key;
- boot: the kernel the next boot starts, and the reboot decision.
- hardware_probe, host_packages_probe, sources_probe: what the nvidia_driver_probe module reads
  from a host (sysfs and /proc, modules on disk, the boot kernel and installed packages, apt source
  files, what the package sources carry), as the '#section' text the parsers above read;
  host_commands: how they run commands (argv lists, never a shell; the module's runner, a local one).

The functions raise ValueError for input they cannot use; plugins/filter/nvidia_driver.py maps
them to filters, which turn that into AnsibleFilterError. Nothing here imports Ansible:
scripts/gpu-host-check.sh imports it on a GPU host with the loader's Python.
"""
