"""Verify nvidia_driver on Debian's real driver packages, with a real DKMS build.

converge installs Debian 12's own driver (branch 535, proprietary modules,
from non-free) with `nvidia_driver_source: distribution`, building for the
kernel whose headers Debian's archive carries (`nvidia_driver_kernels`). The
role installs that kernel's headers itself, and DKMS builds the module at
install time. Debian names the module nvidia-current (FACTS.md; Debian's
nvidia-kernel-dkms installs nvidia-current*.ko under updates/dkms/).

Issue 29: prepare installs a second kernel through linux-image-cloud-amd64, without its
headers, as unattended upgrades do; GRUB would boot it next (the newest /boot/vmlinuz-*).
The role must build for it as well, with its headers and the metapackage's headers twin.
And while a training unit runs, a driver change waits: nothing is installed or rewritten.
"""

import json
from pathlib import Path

from verify_helpers import debian_kernel, host_runner

testinfra_hosts = ["ansible://all"]

FACTS = "/etc/ansible/facts.d/nvidia_driver.fact"
PREFERENCES = "/etc/apt/preferences.d/nvidia-driver.pref"
run_converge = host_runner(Path(__file__).resolve().parents[1] / "converge.yml", fold_whitespace=True)


def boot_kernel(host):
    """The newest kernel image under /boot, by version order: the one GRUB boots (GRUB_DEFAULT=0)."""
    return host.check_output("ls /boot | sed -n 's/^vmlinuz-//p' | sort -V | tail -n 1")


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
    assert report["kernels"] == [debian_kernel(host), boot_kernel(host)]
    assert report["boot_kernel"] == boot_kernel(host)
    assert report["install_deferred"] is False
    assert report["reboot_required"] is False  # no GPU: never a reboot


def test_the_kernel_the_next_boot_starts_got_headers_and_the_module(host):
    kernel = boot_kernel(host)
    assert kernel.endswith("-cloud-amd64") and kernel != debian_kernel(host) and kernel != host.check_output("uname -r")
    assert host.package(f"linux-headers-{kernel}").is_installed
    assert host.package("linux-headers-cloud-amd64").is_installed  # the metapackage's twin: later kernels too
    version = package_version(host, "nvidia-kernel-dkms")
    assert f"nvidia-current/{version}, {kernel}, x86_64: installed" in host.check_output("dkms status")
    assert host.check_output(f"modinfo -k {kernel} -F version nvidia-current") == version


def test_a_driver_change_waits_while_training_runs_and_changes_nothing(host):
    # The open modules replace the proprietary ones: a driver change. hf-train@ runs (a real transient unit).
    before = {path: host.file(path).sha256sum for path in (PREFERENCES, "/var/lib/dpkg/status")}
    host.run_test("systemd-run --unit=hf-train@molecule.service sleep 600")
    try:
        rc, output = run_converge(host, "-e", "nvidia_driver_kernel_modules=open")
        assert rc == 0, output
        assert "is deferred and nothing is changed" in output
        report = json.loads(host.file(FACTS).content_string)
        assert report["install_deferred"] is True
        assert report["install_blocked_by"] == ["hf-train@molecule.service"]
        assert host.package("nvidia-kernel-dkms").is_installed
        assert {path: host.file(path).sha256sum for path in before} == before
        assert not host.package("nvidia-open-kernel-dkms").is_installed
    finally:
        host.run("systemctl stop hf-train@molecule.service")
    # Training over: the same change would go ahead (check mode only: the build takes minutes).
    rc, output = run_converge(host, "--check", "-e", "nvidia_driver_kernel_modules=open")
    assert rc == 0, output
    assert "is deferred" not in output
    rc, output = run_converge(host)
    assert rc == 0, output
    assert json.loads(host.file(FACTS).content_string)["install_deferred"] is False
