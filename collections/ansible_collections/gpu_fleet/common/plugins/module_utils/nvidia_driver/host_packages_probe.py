"""What the host has before any change: the boot kernel, kernel metapackages, installed driver
packages, and the host's apt source files (read-only).

The kernel the next boot starts (grubby on EL; GRUB_DEFAULT and the kernel images under /boot
elsewhere), the installed kernel image packages (apt) and the installed versions of the driver
packages. Sections '#grubby', '#grub_default', '#images', '#image_packages', '#installed' (rows
'name | version | installed'); boot.boot_kernel and installed.installed_packages read them. `root`
is the root of the files read (/etc/default/grub, /boot, /etc/apt): "/" on hosts, a fixture tree
in the tests; the commands (grubby, dpkg-query, rpm) always answer for the running host.
"""

from __future__ import annotations

import re
from pathlib import Path

from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.host_commands import (
    Report,
    read_text,
    under_root,
)

GRUB_DEFAULT_LINE = re.compile(r"^[ \t\n\r\f\v]*GRUB_DEFAULT=")
RPM_INSTALLED_FORMAT = "%{name} | %{epoch}:%{version}-%{release} | installed\n"
DPKG_INSTALLED_FORMAT = "${Package} | ${Version} | ${db:Status-Status}\n"
APT_SOURCE_FILES = ("etc/apt/sources.list", "etc/apt/sources.list.d/*.list", "etc/apt/sources.list.d/*.sources")


def _files(root: str, pattern: str) -> list[Path]:
    base = under_root(root, "")
    if any(char in pattern for char in "*?["):
        return sorted(path for path in base.glob(pattern) if path.exists())
    return [base / pattern] if (base / pattern).exists() else []


def _host_path(root: str, path: Path) -> str:
    """The path as the host names it (the tasks remove sources by these names)."""
    return "/" + path.relative_to(under_root(root, "")).as_posix()


def grub_default_lines(root: str) -> str:
    lines = []
    for path in _files(root, "etc/default/grub") + _files(root, "etc/default/grub.d/*.cfg"):
        text = read_text(path) or ""
        lines += [line + "\n" for line in text.splitlines() if GRUB_DEFAULT_LINE.match(line)]
    return "".join(lines)


def kernel_images(root: str) -> str:
    return "".join(f"{path.name[len('vmlinuz-') :]}\n" for path in _files(root, "boot/vmlinuz-*"))


def host_packages_report(run, family: str, packages: list[str], root: str = "/") -> str:
    """The boot kernel's sources and the installed packages, as '#section' text."""
    report = Report()
    report.section("grubby")
    _, out, _ = run(["grubby", "--default-kernel"])  # absent outside EL: nothing
    report.add(out)
    report.section("grub_default")
    report.add(grub_default_lines(root))
    report.section("images")
    report.add(kernel_images(root))
    report.section("image_packages")
    if family == "apt":
        _, out, _ = run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", "linux-image-*"])
        report.add(
            "".join(f"{row[0]}\n" for row in (line.split() for line in out.splitlines()) if row[1:2] == ["installed"])
        )
    report.section("installed")
    # Without names dpkg-query would list every package and rpm would refuse: no package, no row.
    if packages:
        if family == "apt":
            _, out, _ = run(["dpkg-query", "-W", f"-f={DPKG_INSTALLED_FORMAT}", *packages])
        else:
            _, out, _ = run(["rpm", "-q", "--qf", RPM_INSTALLED_FORMAT, *packages])
        report.add(out)
    return report.text()


def apt_sources_report(root: str = "/") -> str:
    """The host's apt sources, each file after a '#file PATH' line.

    For sources of NVIDIA's repository that cuda-keyring or an admin wrote: repositories.apt_sources
    and existing_source_plan read this text.
    """
    parts = []
    for pattern in APT_SOURCE_FILES:
        for path in _files(root, pattern):
            text = read_text(path)
            if text is not None:
                parts.append(f"#file {_host_path(root, path)}\n{text}\n")
    return "".join(parts)
