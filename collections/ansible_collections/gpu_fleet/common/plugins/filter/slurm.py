"""Slurm: version compatibility and the node's slurm.conf and gres.conf lines (roles slurm_node,
slurm_controller).

Versions are compared as numbers, never as strings ("22.05.10" is newer than "22.05.8"). Slurm's
rule: a slurmctld talks to daemons of its own major release and of the two major releases
before it, and no slurmd may be newer than the slurmctld it reports to. Major releases are the
YY.MM pairs Slurm ships; from 23.11 on there are two a year (YY.05 and YY.11).
"""

from __future__ import annotations

import re

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed
from ansible_collections.gpu_fleet.common.plugins.module_utils.host_address import is_host_address

# The major releases before the twice-a-year cadence, in order (each one counts as one step).
EARLY_RELEASES = [(17, 2), (17, 11), (18, 8), (19, 5), (20, 2), (20, 11), (21, 8), (22, 5), (23, 2), (23, 11)]
MAX_OLDER_RELEASES = 2
# "slurm 22.05.8", "22.05.8-4+deb12u3" (a Debian version: epoch, upstream, revision), "24.11.5".
VERSION = re.compile(r"^(?:slurm(?:-wlm)?\s+)?(?:\d+:)?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+~].*)?$")
GPU_NAME = "gpu"


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


def _topology(facts: dict) -> str:
    """Sockets, cores and threads when the facts agree with the CPU count, else CPUs alone."""
    cpus = int(facts["processor_vcpus"])
    try:
        sockets = int(facts["processor_count"])
        cores = int(facts["processor_cores"])
        threads = int(facts["processor_threads_per_core"])
    except (KeyError, TypeError, ValueError):
        return f"CPUs={cpus}"
    if sockets * cores * threads != cpus or min(sockets, cores, threads) < 1:
        return f"CPUs={cpus}"
    return f"CPUs={cpus} Sockets={sockets} CoresPerSocket={cores} ThreadsPerCore={threads}"


def node_conf(facts: dict, gpu_count, name="", address="", features=(), memory_reserve_mb=1024) -> dict:
    """The node's NodeName= line for slurm.conf and its lines for gres.conf, from Ansible's facts
    (ansible_facts) and the GPU count nvidia_driver detected (its report's gpu_count).

    Returns {name, address, line, gres, gpu_count, features}; ValueError on facts that cannot
    describe a node (no CPU count or memory, a memory reserve larger than the memory).
    """
    gpus = int(gpu_count)
    if gpus < 0:
        raise ValueError(f"the GPU count is {gpus}; it must be 0 or more")
    name = str(name or facts.get("hostname") or "")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"{name!r} cannot be a Slurm NodeName (letters, digits, '.', '_' and '-')")
    for key in ("processor_vcpus", "memtotal_mb"):
        if not str(facts.get(key, "")).isdigit() or int(facts[key]) < 1:
            raise ValueError(f"the facts of {name} lack {key} (gather facts: ansible.builtin.setup)")
    memory = int(facts["memtotal_mb"]) - int(memory_reserve_mb)
    if memory < 1:
        raise ValueError(
            f"{name} has {facts['memtotal_mb']} MB of memory, not more than the reserve {memory_reserve_mb} MB"
        )
    wanted = [str(facts.get("architecture", "")).lower()]
    if facts.get("distribution") and facts.get("distribution_major_version"):
        wanted.append(f"{str(facts['distribution']).lower()}{facts['distribution_major_version']}")
    if gpus:
        wanted.append(GPU_NAME)
    wanted += [str(feature) for feature in features]
    features = []
    for feature in wanted:
        if feature and feature not in features:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", feature):
                raise ValueError(f"{feature!r} cannot be a Slurm feature (letters, digits, '.', '_' and '-')")
            features.append(feature)
    # The address comes from the node's own facts: whatever that host reports must stay one word
    # of its own line in the controller's slurm.conf (a newline would add a directive there).
    if address and not is_host_address(str(address)):
        raise ValueError(f"{address!r} cannot be {name}'s NodeAddr (an IP address or a DNS name)")
    words = [f"NodeName={name}"]
    if address:
        words.append(f"NodeAddr={address}")
    words += [_topology(facts), f"RealMemory={memory}"]
    if gpus:
        words.append(f"Gres={GPU_NAME}:{gpus}")
    words += [f"Feature={','.join(features)}", "State=UNKNOWN"]
    gres = []
    if gpus:
        files = "/dev/nvidia0" if gpus == 1 else f"/dev/nvidia[0-{gpus - 1}]"
        gres.append(f"NodeName={name} Name={GPU_NAME} File={files}")
    return {
        "name": name,
        "address": str(address),
        "line": " ".join(words),
        "gres": gres,
        "gpu_count": gpus,
        "features": features,
    }


class FilterModule:
    """Filters for the Slurm roles (prefix slurm_)."""

    def filters(self):
        return prefixed("slurm_", (version_problems, debian_versions, node_conf))
