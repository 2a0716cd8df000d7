"""What the scenarios' verify tests share: running a playbook against Molecule's inventory.

The verifier puts this folder on PYTHONPATH (.config/molecule/config.yml).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")


def run_playbook(playbook: str | Path, *extra_args: str, limit: str = "", timeout: int = 300) -> tuple[int, str]:
    """ansible-playbook against the scenario's inventory; return (rc, stdout + stderr without colour codes)."""
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook), *extra_args]
    if limit:
        command += ["--limit", limit]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout, env=env)
    return done.returncode, ANSI_CODES.sub("", done.stdout + done.stderr)
