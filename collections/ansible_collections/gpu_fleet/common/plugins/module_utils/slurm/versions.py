"""Slurm versions: which slurmd may report to which slurmctld, and what apt has of Slurm (roles
slurm_node, slurm_controller).

Versions are compared as numbers, never as strings ("22.05.10" is newer than "22.05.8"). Slurm's
rule: a slurmctld talks to daemons of its own major release and of the two major releases
before it, and no slurmd may be newer than the slurmctld it reports to. Major releases are the
YY.MM pairs Slurm ships; from 23.11 on there are two a year (YY.05 and YY.11).
"""

from __future__ import annotations

import re

# The major releases before the twice-a-year cadence, in order (each one counts as one step).
EARLY_RELEASES = [(17, 2), (17, 11), (18, 8), (19, 5), (20, 2), (20, 11), (21, 8), (22, 5), (23, 2), (23, 11)]
MAX_OLDER_RELEASES = 2
# "slurm 22.05.8", "22.05.8-4+deb12u3" (a Debian version: epoch, upstream, revision), "24.11.5".
VERSION = re.compile(r"^(?:slurm(?:-wlm)?\s+)?(?:\d+:)?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+~].*)?$")


def version(text) -> tuple[int, int, int]:
    """(major year, major month, micro) of a Slurm or Debian package version; ValueError else."""
    match = VERSION.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a Slurm version such as 22.05.8 (or a package version 22.05.8-4)")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def release_index(major: tuple[int, int]) -> int:
    """The position of a major release in Slurm's sequence of major releases."""
    if major in EARLY_RELEASES:
        return EARLY_RELEASES.index(major)
    year, month = major
    if major > EARLY_RELEASES[-1] and month in (5, 11):
        return len(EARLY_RELEASES) - 1 + 2 * (year - 24) + (1 if month == 5 else 2)
    raise ValueError(f"{year:02d}.{month:02d} is not a Slurm major release (known: YY.05 and YY.11 from 24.05 on)")


def version_problems(node_version, controller_version, node_what="slurmd", controller_what="slurmctld") -> list[str]:
    """Why a daemon at node_version cannot report to a slurmctld at controller_version (empty: it can)."""
    try:
        node, controller = version(node_version), version(controller_version)
        steps = release_index(controller[:2]) - release_index(node[:2])
    except ValueError as error:
        return [str(error)]
    shown = f"{node_what} {'.'.join(map(str, node))} and {controller_what} {'.'.join(map(str, controller))}"
    if node > controller:
        return [
            f"{shown}: the {node_what} is newer than the {controller_what}, which Slurm refuses. Upgrade the "
            f"controller first (slurmctld before any slurmd), or pin the nodes' Slurm to the controller's version."
        ]
    if steps > MAX_OLDER_RELEASES:
        return [
            f"{shown}: the {controller_what} is {steps} major releases ahead; Slurm supports daemons at most "
            f"{MAX_OLDER_RELEASES} major releases older. Give every host one Slurm version (one Debian release "
            "for the whole cluster), or upgrade the nodes' Slurm."
        ]
    return []


def debian_versions(apt_cache_policy) -> dict:
    """{'installed': ..., 'candidate': ...} from `apt-cache policy PACKAGE` ('' for none)."""
    found = {"installed": "", "candidate": ""}
    for line in str(apt_cache_policy).splitlines():
        key, _, value = line.strip().partition(":")
        if key.lower() in found and not found[key.lower()]:
            value = value.strip()
            found[key.lower()] = "" if value in ("(none)", "") else value
    return found
