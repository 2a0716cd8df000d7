"""Which pins of the loader's lock a virtual environment lacks, as pip decides.

The role compares the lock with what the venv holds instead of asking pip, whose check mode
reports a change for every requirements file. The comparison follows pip: names are compared as
PEP 503 normalises them (ruamel.yaml is ruamel_yaml), and a pin without a local version label
(torch==2.7.0) is met by a build that carries one (torch==2.7.0+cpu, torch==2.7.0+cu126); a pin
with a label must match it exactly.
"""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[-_.]+")
# A pin's hashes on its line (--hash=sha256:...): what pip checks, not what it installs.
_HASHES = re.compile(r"\s+--hash=\S+")


def _normalised(requirement: str) -> str | None:
    """'Ruamel.Yaml == 0.19' -> 'ruamel-yaml==0.19'; None for what is not a name==version pin."""
    name, sep, version = requirement.strip().partition("==")
    if not sep or not name.strip() or not version.strip():
        return None
    return _SEPARATORS.sub("-", name.strip().lower()) + "==" + version.strip().lower()


def missing_pins(lock_text: str, held: list[str]) -> list[str]:
    """The lock's name==version lines (comments, blanks, options and hashes skipped) that `held` does not meet.

    `held` is what the venv lists (name==version a line, as pip freeze prints it).
    """
    have = {pin for pin in map(_normalised, held) if pin}
    have |= {pin.split("+", 1)[0] for pin in have}
    missing = []
    for line in lock_text.splitlines():
        line = _HASHES.sub("", line)
        pin = _normalised(line.split("#", 1)[0])
        if pin and pin not in have:
            missing.append(line.strip())
    return missing
