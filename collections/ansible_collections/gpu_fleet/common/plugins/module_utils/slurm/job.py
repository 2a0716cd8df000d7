"""Training as a Slurm batch job (playbooks/train.yml with train_launcher: slurm, role slurm_node's
job entry point): the launcher's choice, the job's settings checked, and the sbatch options.

The job is stopped cleanly the way the training unit is: SIGTERM to hf_loader.launch on every node,
which passes it to its ranks and waits for their checkpoint. Slurm sends it `signal_seconds` before
the time limit (`--signal=B:TERM@S`: the batch shell only, which forwards it to its srun step and
then requeues the job; without B: Slurm would signal the step's tasks but the batch script could not
tell a stop from the end of training). Slurm may send it up to 60 s earlier than asked (its event
resolution), never later.

plugins/filter/slurm_job.py maps the slurm_job_* filters to these functions, and
plugins/filter/train.py the train_launcher_problems filter.
"""

from __future__ import annotations

import re

LAUNCHERS = ("systemd", "slurm")
# sbatch --signal's @sig_time is at most 65535 seconds (Slurm's documentation).
MAX_SIGNAL_SECONDS = 65535
# Slurm may signal this much earlier than asked: the job must still have run by then.
SIGNAL_RESOLUTION = 60
# Slurm's time formats: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
# "days-hours:minutes" and "days-hours:minutes:seconds".
TIME = re.compile(r"^(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+)(?::(\d+))?)?)$")
WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
GRES = re.compile(r"^[A-Za-z0-9_]+(?::[A-Za-z0-9_.-]+)*(?:,[A-Za-z0-9_]+(?::[A-Za-z0-9_.-]+)*)*$")


def launcher_problems(launcher) -> list[str]:
    """Why train.yml cannot use `launcher` (empty: it can)."""
    if launcher in LAUNCHERS:
        return []
    return [
        f"train_launcher must be systemd or slurm (got {launcher!r}): systemd (the default) starts the "
        "training units over SSH on the ready hosts; slurm submits one sbatch job (docs/slurm.md, "
        "'Running a job'). Use -e train_launcher=slurm or leave it unset."
    ]


def time_seconds(text) -> int | None:
    """Seconds of a Slurm time limit ("90", "1:30:00", "2-00:00:00"); None for none (empty,
    UNLIMITED, INFINITE); ValueError for text Slurm would not take."""
    text = str(text).strip()
    if text.upper() in ("", "UNLIMITED", "INFINITE"):
        return None
    match = TIME.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)")
    days, d_hours, d_minutes, d_seconds, a, b, c = match.groups()
    if days is not None:
        return int(days) * 86400 + int(d_hours) * 3600 + int(d_minutes or 0) * 60 + int(d_seconds or 0)
    if c is not None:  # hours:minutes:seconds
        return int(a) * 3600 + int(b) * 60 + int(c)
    return int(a) * 60 + int(b or 0)  # minutes[:seconds]


def _int(value) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def stop_timeout(signal_seconds) -> int:
    """Seconds hf_loader.launch waits for its ranks' checkpoints after SIGTERM: most of the warning
    Slurm gives, so that the launcher, not Slurm's SIGKILL at the limit, ends a stuck rank (the
    training unit's rule for TimeoutStopSec)."""
    seconds = int(signal_seconds)
    return max(int(seconds * 0.9), seconds - 10, 1)


def problems(job: dict) -> list[str]:
    """Why the job's settings (slurm_node_job_* without the prefix) cannot make a job; each names
    its variable and what it takes."""
    found = []
    nodes, ranks, signal = _int(job.get("nodes")), _int(job.get("ranks_per_node")), _int(job.get("signal_seconds"))
    port = _int(job.get("master_port"))
    if nodes is None or nodes < 1:
        found.append(f"slurm_node_job_nodes must be a number of nodes >= 1 (got {job.get('nodes')!r}).")
    if ranks is None or ranks < 1:
        found.append(
            "slurm_node_job_ranks_per_node must be >= 1, the ranks (GPUs) each node runs "
            f"(got {job.get('ranks_per_node')!r})."
        )
    if port is None or not 0 < port < 65536:
        found.append(f"slurm_node_job_master_port must be a port 1-65535 (got {job.get('master_port')!r}).")
    if signal is None or not 0 < signal <= MAX_SIGNAL_SECONDS:
        found.append(
            f"slurm_node_job_signal_seconds must be 1-{MAX_SIGNAL_SECONDS}, the seconds before the time limit at "
            f"which the job is told to checkpoint (got {job.get('signal_seconds')!r})."
        )
    try:
        limit = time_seconds(job.get("time_limit", ""))
    except ValueError as error:
        found.append(f"slurm_node_job_time_limit: {error}; empty for the partition's limit.")
        limit = None
    if limit is not None and signal is not None and signal > 0 and limit <= signal + SIGNAL_RESOLUTION:
        found.append(
            f"slurm_node_job_time_limit {job.get('time_limit')!r} ({limit} s) leaves no time to train: the job is told "
            f"to stop slurm_node_job_signal_seconds ({signal}) before it, and Slurm may tell it up to "
            f"{SIGNAL_RESOLUTION} s earlier. Give a longer limit or fewer seconds."
        )
    for key in ("name", "train_job", "user"):
        if not WORD.match(str(job.get(key, ""))):
            found.append(
                f"slurm_node_job_{key} must be one word of letters, digits, '.', '_' or '-' (got {job.get(key)!r})."
            )
    for key in ("partition", "account", "qos"):
        if job.get(key) and not WORD.match(str(job[key])):
            found.append(f"slurm_node_job_{key} must be one word, or empty (got {job.get(key)!r}).")
    if job.get("gres") and not GRES.match(str(job["gres"])):
        found.append(
            "slurm_node_job_gres must be a --gres list such as gpu:8 or gpu:h200:8, or empty "
            f"(got {job.get('gres')!r})."
        )
    for key in ("log_dir", "script_dir", "venv", "config_dir", "environment_file"):
        value = str(job.get(key, ""))
        if not value.startswith("/") or re.search(r"[\s'\"\\$`%]", value):
            found.append(
                f"slurm_node_job_{key} must be an absolute path without blanks, quotes, '$', '%' or '\\' "
                f"(got {value!r})."
            )
    extra = job.get("extra_options", [])
    if not isinstance(extra, list) or any(not str(o).startswith("--") or "\n" in str(o) for o in extra):
        found.append(
            f"slurm_node_job_extra_options must be a list of sbatch options, each --NAME[=VALUE] (got {extra!r})."
        )
    return found


def sbatch_options(job: dict) -> list[str]:
    """The #SBATCH options of the job, in a fixed order (its settings checked by problems)."""
    refused = problems(job)
    if refused:
        raise ValueError(" ".join(refused))
    options = [
        f"--job-name={job['name']}",
        f"--nodes={int(job['nodes'])}",
        # One srun task a node: hf_loader.launch starts the node's ranks itself.
        "--ntasks-per-node=1",
        "--exclusive",
        # A requeued job (preempted, `scontrol requeue`, or requeued by itself at its time limit)
        # keeps its ID and starts again from its checkpoint (autoresume).
        "--requeue",
        f"--signal=B:TERM@{int(job['signal_seconds'])}",
        # The log of every run of the job, requeued ones appended: %x the name, %j the job ID.
        f"--output={job['log_dir']}/%x-%j.out",
        f"--chdir={job['log_dir']}",
        "--open-mode=append",
    ]
    if time_seconds(job.get("time_limit", "")) is not None:
        options.append(f"--time={job['time_limit']}")
    for key in ("partition", "account", "qos", "gres"):
        if job.get(key):
            options.append(f"--{key}={job[key]}")
    options += [str(o) for o in job.get("extra_options", [])]
    return options
