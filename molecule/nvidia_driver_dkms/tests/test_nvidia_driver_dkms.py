"""Verify nvidia_driver on Debian's real driver packages, with a real DKMS build.

converge installs Debian 12's own driver (branch 535, proprietary modules,
from non-free) with `nvidia_driver_source: distribution`, building for the
kernel whose headers Debian's archive carries (`nvidia_driver_kernels`). The
role installs that kernel's headers itself, and DKMS builds the module at
install time. Debian names the module nvidia-current (FACTS.md; Debian's
nvidia-kernel-dkms installs nvidia-current*.ko under updates/dkms/).
"""

import json

from verify_helpers import debian_kernel

testinfra_hosts = ["ansible://all"]

FACTS = "/etc/ansible/facts.d/nvidia_driver.fact"


def package_version(host, name):
    """The upstream part of an installed package's version (535.261.03-1 -> 535.261.03)."""
    version = host.check_output(f"dpkg-query -W -f='${{Version}}' {name}")
    return version.split(":", 1)[-1].split("-", 1)[0]


def test_the_role_installed_the_headers_of_the_kernel_to_build_for(host):
    assert host.package(f"linux-headers-{debian_kernel(host)}").is_installed


def test_dkms_built_and_installed_the_packaged_version_for_that_kernel(host):
    version = package_version(host, "nvidia-kernel-dkms")
    assert version.startswith("535.")
    status = host.check_output("dkms status")
    assert f"nvidia-current/{version}, {debian_kernel(host)}, x86_64: installed" in status, status


def test_modinfo_finds_the_module_of_the_packaged_version(host):
    kernel = debian_kernel(host)
    assert host.check_output(f"modinfo -k {kernel} -F version nvidia-current") == package_version(
        host, "nvidia-kernel-dkms"
    )
    assert "/updates/dkms/" in host.check_output(f"modinfo -k {kernel} -n nvidia-current")


def test_report_names_the_installed_driver_and_the_kernel(host):
    report = json.loads(host.file(FACTS).content_string)
    assert report["action"] == "install"
    assert report["source"] == "distribution"
    assert report["driver_version"] == package_version(host, "nvidia-kernel-dkms")
    assert report["kernels"] == [debian_kernel(host)]
    assert report["reboot_required"] is False  # no GPU: never a reboot
