"""Which Python the loader's venv is made with, and the packages that bring it: the system python3
where it is new enough, the distribution's python3.11 on EL 8/9, or a refusal with its reason.
"""

from __future__ import annotations

import re

# files/hf_loader/pyproject.toml: requires-python = ">=3.10".
LOADER_MIN_PYTHON = (3, 10)
# EL's python3 for a whole major release, and the first minor release whose AppStream carries
# python3.11 (a separate, parallel-installable package whose venv module Red Hat's guide runs alone: Red Hat,
# "Installing and using dynamic programming languages", RHEL 9 tables 1.1 and section "Using
# Python", and RHEL 8 "Configuring basic system settings", the same chapter: RHEL 8 python3 is 3.6,
# python3.11 from 8.8; RHEL 9 python3 is 3.9, python3.11 from 9.2). EL 7 has no python3.11 at all.
EL_SYSTEM_PYTHON = {7: (3, 6), 8: (3, 6), 9: (3, 9)}
EL_PYTHON311_SINCE = {8: (8, 8), 9: (9, 2)}
_VERSIONED_PYTHON = re.compile(r"^python(3)\.(\d+)$")


def _version(text) -> tuple[int, ...] | None:
    """'8.10' -> (8, 10), '9' -> (9,); None for what is not dotted numbers. Compared as tuples:
    8.10 is newer than 8.8, which a string comparison gets wrong."""
    parts = str(text if text is not None else "").strip().split(".")
    if not all(part.isdigit() for part in parts):
        return None
    return tuple(int(part) for part in parts)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def python(facts: dict, requested: str = "") -> dict:
    """The interpreter hf_loader's venv is made with on a host, from its facts (os_family,
    distribution, distribution_version, distribution_major_version, python.version) and
    hf_loader_python ('' chooses).

    Returns {command, version ('3.11'), tag ('cp311', the wheelhouse folder), packages (what brings
    the command; the vars/ files add the rest), problem ('' or why the host is refused and the fix)}.
    Chosen: the system python3 where it is 3.10 or newer (its version is the one Ansible runs,
    as before: Debian, Ubuntu, EL 10, Fedora); python3.11 from AppStream on EL 8.8+ and 9.2+, whose
    python3 is 3.6 or 3.9. An older EL minor release is refused with the release that has it.
    """
    facts = facts or {}
    family = facts.get("os_family", "")
    name = f"{facts.get('distribution', '?')} {facts.get('distribution_version', '?')}"
    major = _version(facts.get("distribution_major_version"))
    major = major[0] if major else None
    release = _version(facts.get("distribution_version"))
    ansible_python = (facts.get("python") or {}).get("version") or {}
    el_system = EL_SYSTEM_PYTHON.get(major) if family == "RedHat" else None
    if el_system:
        system = el_system
    elif "major" in ansible_python and "minor" in ansible_python:
        system = (int(ansible_python["major"]), int(ansible_python["minor"]))
    else:
        system = None
    requested = (requested or "").strip()
    floor = _dotted(LOADER_MIN_PYTHON)

    def chosen(command, version, packages, problem=""):
        return {
            "command": command,
            "version": _dotted(version) if version else "",
            "tag": "cp" + "".join(map(str, version)) if version else "",
            "packages": packages,
            "problem": problem,
        }

    if requested and requested != "python3":
        match = _VERSIONED_PYTHON.match(requested)
        if not match:
            return chosen(
                requested,
                None,
                [],
                (
                    f"hf_loader_python {requested!r} is not an interpreter the role can install: set it to a"
                    f" versioned command such as python3.11 (the package of that name brings it), python3, or"
                    f" leave it empty to let the role choose."
                ),
            )
        version = (int(match.group(1)), int(match.group(2)))
        # EL: the package of that name (venv included) and setuptools, as for python3.11 below;
        # Debian and Ubuntu split venv support into its own package.
        packages = [requested, requested + "-setuptools"] if family == "RedHat" else [requested, requested + "-venv"]
        if version < LOADER_MIN_PYTHON:
            return chosen(
                requested,
                version,
                packages,
                (
                    f"hf_loader_python {requested} is older than Python {floor}, which the loader needs"
                    f" (files/hf_loader requires-python). Set it to python3.11 or newer, or leave it empty."
                ),
            )
        return chosen(requested, version, packages)

    if system is None:
        return chosen(
            "python3",
            None,
            [],
            (f"The Python of {name} is unknown (no python facts): gather facts (setup) before hf_loader runs."),
        )
    if system >= LOADER_MIN_PYTHON:
        return chosen("python3", system, ["python3"] if family == "RedHat" else [])
    if requested == "python3":
        return chosen(
            "python3",
            system,
            [],
            (
                f"hf_loader_python is python3, which is Python {_dotted(system)} on {name}; the loader needs"
                f" {floor} or newer. Leave hf_loader_python empty to let the role choose, or name a newer one"
                f" (python3.11)."
            ),
        )
    since = EL_PYTHON311_SINCE.get(major) if el_system else None
    if since is None:
        return chosen(
            "python3",
            system,
            [],
            (
                f"{name}'s python3 is {_dotted(system)} and the loader needs Python {floor} or newer; the"
                f" distribution has no python3.11 the role can install. Set hf_loader_python to a Python"
                f" {floor}+ that the host's repositories carry, or move the host to a newer release."
            ),
        )
    # A release without a minor part is a rolling stream (CentOS Stream reports "9"): it carries
    # every AppStream package of its major release.
    if release is not None and len(release) > 1 and release < since:
        return chosen(
            "python3.11",
            (3, 11),
            ["python3.11"],
            (
                f"{name}'s python3 is {_dotted(system)} and the loader needs Python {floor} or newer; its"
                f" AppStream carries python3.11 only from {_dotted(since)}. Update the host to"
                f" {_dotted(since)} or later (dnf upgrade), then rerun; the role installs python3.11 itself."
            ),
        )
    # setuptools: the pip module needs packaging or setuptools in the Python Ansible runs, and
    # ansible-core's interpreter discovery prefers python3.11 to /usr/bin/python3 once it is installed.
    return chosen("python3.11", (3, 11), ["python3.11", "python3.11-setuptools"])
