"""How the nvidia_driver probes run commands (argv lists only, never a shell string) and read
the host's files (under a root: "/" on hosts, a fixture tree in the tests).

A runner is a callable `run(argv) -> (rc, stdout, stderr)`, the shape of AnsibleModule.run_command.
The module hands in `module_runner(module)`; scripts on a host (scripts/gpu-host-check.sh) and the
tests that drive real apt hand in `local_runner`; the other tests hand in a fake that replays
captured outputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# A program that is not installed answers as the shell did: 127 and nothing on stdout, so that
# `command -v grubby`, `rpm -q` on Debian and the like read as "absent", never as a crash.
NOT_FOUND_RC = 127
# Every probe reads the tools' English output (apt-cache madison, dpkg-query, apt-get's simulation).
PROBE_ENVIRONMENT = {"LC_ALL": "C"}


def _found(program: str, which) -> bool:
    if "/" in program:
        return os.access(program, os.X_OK)
    return which(program) is not None


def module_runner(module):
    """A runner over AnsibleModule.run_command (no shell, LC_ALL=C)."""

    def run(argv):
        if not _found(argv[0], module.get_bin_path):
            return NOT_FOUND_RC, "", f"{argv[0]}: not found"
        return module.run_command(argv, environ_update=PROBE_ENVIRONMENT)

    return run


def local_runner(argv):
    """A runner over subprocess (no shell, LC_ALL=C), for scripts and tests outside Ansible."""
    if not _found(argv[0], shutil.which):
        return NOT_FOUND_RC, "", f"{argv[0]}: not found"
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **PROBE_ENVIRONMENT}, check=False)
    return done.returncode, done.stdout, done.stderr


def under_root(root, path: str) -> Path:
    """`path`, as the host names it (/etc/apt/...) or relative to its root, inside the tree at `root`."""
    return Path(root or "/") / path.lstrip("/")


def read_text(path: Path) -> str | None:
    """A file's text, or None when it cannot be read (absent, a folder, no permission)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


class Report:
    """The '#section' text that probe.parse_probe and the filters read (the scripts' output format)."""

    def __init__(self):
        self.parts: list[str] = []

    def section(self, name: str) -> None:
        self.parts.append(f"#{name}\n")

    def add(self, text: str) -> None:
        """Append a command's output or a file's text, ending it with a newline as a section needs."""
        if text:
            self.parts.append(text if text.endswith("\n") else text + "\n")

    def text(self) -> str:
        return "".join(self.parts)
