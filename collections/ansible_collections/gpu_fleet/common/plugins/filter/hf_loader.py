"""The hf_loader role's decisions: which pins a venv lacks, whether a host's wheelhouse is in step.

Which pins of the loader's lock a virtual environment lacks, as pip decides.

The role compares the lock with what the venv holds instead of asking pip,
whose check mode reports a change for every requirements file. The comparison
follows pip: names are compared as PEP 503 normalises them (ruamel.yaml is
ruamel_yaml), and a pin without a local version label (torch==2.7.0) is met by
a build that carries one (torch==2.7.0+cpu, torch==2.7.0+cu126); a pin with a
label must match it exactly.

Whether a host's wheelhouse is in step with the controller's: the same wheel
names, sizes and whole-second modification times (rsync's own quick check; the
sync preserves times).

Where the training job writes its checkpoints: the folder that the training unit must be able
to write for hf_loader_train_config's save_folder, and why a save_folder is refused.

Which Python the loader's venv is made with, and the packages that bring it: the system python3
where it is new enough, the distribution's python3.11 on EL 8/9, or a refusal with its reason.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

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


def same_wheels(host_files: list[dict], controller_wheels: list[dict]) -> bool:
    """Whether a host's `find` result (path, size, mtime) lists exactly the controller's wheels.

    `controller_wheels` is what the gpu_fleet.common.hf_loader_wheels lookup returns (name, size, mtime).
    """
    host = sorted((PurePosixPath(f["path"]).name, int(f["size"]), int(f["mtime"])) for f in host_files)
    return host == sorted((w["name"], int(w["size"]), int(w["mtime"])) for w in controller_wheels)


# Folders a save_folder may not be in: the unit cannot write them (ProtectSystem=strict keeps them
# read-only whatever ReadWritePaths= says for the API file systems, ProtectHome= hides the homes),
# the unit's /tmp is private and emptied at every stop, or they hold the system and the loader.
_NO_CHECKPOINTS_UNDER = {
    "/proc": "the kernel's API file system",
    "/sys": "the kernel's API file system",
    "/dev": "device nodes",
    "/run": "a tmpfs emptied at every boot",
    "/tmp": "private to the unit (PrivateTmp=yes) and emptied at every stop",
    "/var/tmp": "private to the unit (PrivateTmp=yes) and emptied at every stop",
    "/home": "hidden from the unit (ProtectHome=yes)",
    "/root": "hidden from the unit (ProtectHome=yes)",
    "/boot": "the boot partition",
    "/etc": "configuration",
    "/usr": "the operating system",
    "/bin": "the operating system",
    "/sbin": "the operating system",
    "/lib": "the operating system",
    "/lib64": "the operating system",
}


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def checkpoint_dir(train_config) -> str:
    """The folder the training unit writes checkpoints into: save_folder up to its first placeholder.

    Composer fills in {run_name} (and {rank}, ...) at run time, so the unit is given the folder
    above the first segment that holds one: /data/checkpoints/{run_name} -> /data/checkpoints.
    '' when the config sets no save_folder.
    """
    folder = (train_config or {}).get("save_folder") if isinstance(train_config, dict) else None
    if not isinstance(folder, str) or not folder.strip():
        return ""
    kept = []
    for segment in folder.strip().split("/"):
        if "{" in segment or "}" in segment:
            break
        kept.append(segment)
    return str(PurePosixPath("/".join(kept) or "/")) if folder.startswith("/") else folder


def checkpoint_problems(train_config, cache_root: str, protected: dict | None = None) -> list[str]:
    """Why hf_loader_train_config's checkpoint settings cannot work on the unit ([] when they can).

    `protected` maps other folders the role manages (name -> path) that must not hold checkpoints.
    """
    if not isinstance(train_config, dict):
        return []
    name = "hf_loader_train_config.save_folder"
    folder = train_config.get("save_folder")
    problems = []
    if train_config.get("autoresume") is True:
        if not folder:
            problems.append(
                "hf_loader_train_config.autoresume is true but save_folder is not set: there is"
                " nowhere to look for a checkpoint. Set save_folder (e.g. /data/checkpoints) or"
                " autoresume: false."
            )
        if not train_config.get("run_name"):
            problems.append(
                "hf_loader_train_config.autoresume is true but run_name is not set: each start would"
                " get a new random name and never find the last one's checkpoints. Set run_name to"
                " a name kept for every start of the job (e.g. resnet50-imagenet)."
            )
    if folder is None or folder == "":
        return problems
    fix = "Set it to an absolute folder outside the cache, such as /data/checkpoints."
    if not isinstance(folder, str):
        return [*problems, f"{name} must be a string (got {folder!r}). {fix}"]
    if "://" in folder:
        return [
            *problems,
            f"{name} {folder!r} is a URI: the role makes local folders writable for the training"
            f" unit, nothing else. {fix}",
        ]
    if not folder.startswith("/"):
        return [
            *problems,
            f"{name} {folder!r} is relative: Composer would resolve it against the unit's working"
            f" folder, which is not where an operator looks for checkpoints. {fix}",
        ]
    writable = checkpoint_dir(train_config)
    if writable == "/":
        return [*problems, f"{name} {folder!r} would make the whole file system writable. {fix}"]
    refused = [(top, why) for top, why in _NO_CHECKPOINTS_UNDER.items() if _within(writable, top)]
    refused += [
        (path, f"the folder of {var}") for var, path in (protected or {}).items() if path and _within(writable, path)
    ]
    if cache_root and _within(cache_root, writable) and writable != cache_root:
        # The training user would own a folder above the cache: it could move the cache's mount
        # point aside while the volume is not mounted and put its own copy in its place.
        refused.insert(0, (writable, f"a folder above the dataset cache {cache_root}, which only root may own"))
    if cache_root and _within(writable, cache_root):
        refused.insert(0, (cache_root, "the dataset cache, read-only to the unit (hf_loader_cache_root)"))
    if refused:
        top, why = refused[0]
        problems.append(f"{name} {folder!r} lies in {top}, {why}. {fix}")
    return problems


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


def python_choice(facts: dict, requested: str = "") -> dict:
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


class FilterModule:
    def filters(self):
        return {
            "hf_loader_missing_pins": missing_pins,
            "hf_loader_same_wheels": same_wheels,
            "hf_loader_checkpoint_dir": checkpoint_dir,
            "hf_loader_checkpoint_problems": checkpoint_problems,
            "hf_loader_python": python_choice,
        }
