"""The node's NodeName= line for slurm.conf and its gres.conf lines (role slurm_node), from the
host's facts and its GPU count."""

from __future__ import annotations

import re

from ansible_collections.gpu_fleet.common.plugins.module_utils.host_address import is_host_address

GPU_NAME = "gpu"


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
