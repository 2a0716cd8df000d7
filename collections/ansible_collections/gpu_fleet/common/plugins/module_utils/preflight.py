"""The checks every role's preflight runs, as pure functions (the gpu_fleet.common.preflight action).

One rule for paths and one for single words, written once: the roles write
paths into fstab, systemd units and environment files, and values into
environment files, all unquoted. dataset_volume_logic uses the same characters
for volume sources, and the probe module imports that on the target, so nothing
here imports Ansible.
"""

from __future__ import annotations

import json
import re

# What ends or expands an unquoted word in a shell, an environment file or a unit line.
WORD_UNSAFE = re.compile(r"[\s\"'$`\\]")
# Paths also go into fstab, where ',' separates options and '#' starts a comment.
PATH_UNSAFE = re.compile(r"[\s\"'$`\\,#]")

PATH_RULE = "without whitespace, quotes, commas, '#', '$', '`', '\\' or a '.' or '..' segment"
WORD_RULE = "one word (not a list or mapping) without whitespace, quotes, '$', '`' or '\\'"


def _unsafe(text: str, pattern: re.Pattern) -> str:
    found = sorted(set(pattern.findall(text)))
    return "holds " + ", ".join("whitespace" if char.isspace() else repr(char) for char in found) if found else ""


def path_problem(value, relative: bool = False) -> str:
    """Why `value` is not a safe path ('' when it is): absolute (or relative), no unsafe character or ./.. segment."""
    if not isinstance(value, str):
        return "not a string"
    if not value:
        return "empty"
    if value.startswith("/") == relative:
        return "starts with '/'" if relative else "not absolute"
    unsafe = _unsafe(value, PATH_UNSAFE)
    if unsafe:
        return unsafe
    dots = [segment for segment in value.split("/") if segment in (".", "..")]
    return f"has a {dots[0]!r} segment" if dots else ""


def word_problem(value) -> str:
    """Why `value` cannot be written unquoted as one word ('' when it can)."""
    if isinstance(value, (dict, list, tuple)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return _unsafe(str(value), WORD_UNSAFE)


def _entries(name: str, value):
    """(label, value) pairs: a list or mapping stands for each of its entries."""
    if isinstance(value, dict):
        return [(f"{name}.{key}", item) for key, item in value.items()]
    if isinstance(value, (list, tuple)):
        return [(f"{name}[{index}]", item) for index, item in enumerate(value)]
    return [(name, value)]


def unknown_variables(names, prefix: str, known, other_roles=()) -> list[str]:
    """The variables named `<prefix>_...` that are not in `known`, sorted.

    A name that starts with another role's prefix is that role's to check: role fleet leaves
    fleet_pull_* to fleet_pull and fleet_artifact_* to fleet_artifact."""
    longer = tuple(role + "_" for role in other_roles if role.startswith(prefix + "_"))
    ours = {name for name in names if name.startswith(prefix + "_") and not name.startswith(longer)}
    return sorted(ours - set(known))


def _bad(values: dict, problem) -> list[str]:
    bad = []
    for name, value in values.items():
        for label, item in _entries(name, value):
            why = problem(item)
            if why:
                bad.append(f"{label} {json.dumps(item, default=str)} ({why})")
    return bad


def failures(
    role: str,
    unknown=(),
    known=(),
    paths=None,
    relative_paths=None,
    words=None,
    checks=(),
) -> list[str]:
    """Every failing message, in order: unknown variables, paths, relative paths, words, then the failed checks."""
    messages = []
    if unknown:
        messages.append(
            f"Unknown variable(s) {', '.join(unknown)}: {role} knows only {', '.join(known)}."
            " Fix the spelling in your inventory or extra vars."
        )
    bad = _bad(paths or {}, path_problem)
    if bad:
        messages.append(f"Bad path(s): {', '.join(bad)}. A path must be absolute, {PATH_RULE}, for example /data/hf.")
    bad = _bad(relative_paths or {}, lambda value: path_problem(value, relative=True))
    if bad:
        messages.append(
            f"Bad relative path(s): {', '.join(bad)}. These are relative, {PATH_RULE}, for example hub or datasets/x."
        )
    bad = _bad(words or {}, word_problem)
    if bad:
        messages.append(f"Not single words: {', '.join(bad)}. Each value must be {WORD_RULE}.")
    messages.extend(check["msg"] for check in checks if not check["ok"])
    return messages
