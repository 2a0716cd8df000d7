"""On a Slurm node the rollout holds, what becomes of the Slurm jobs on it. Slurm keeps a job whole
itself: a requeued job stops on all its nodes and waits, pending, for nodes to run on again (the
rollout's hold keeps it off this one), so nothing is restarted here."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.job_records import (
    JOB_MODES,
)

# squeue's states of a job that still holds its nodes; COMPLETING is already ending.
SLURM_REQUEUEABLE_STATES = ("RUNNING", "CONFIGURING", "SUSPENDED")


def slurm_jobs(jobs, mode) -> dict:
    """What the rollout does with the Slurm jobs on a node it upgrades (the jobs as
    `gpu-fleet-slurm-health --jobs` lists them), for upgrade_driver_jobs `mode`:
    {'requeue': job ids, 'wait': job ids to see end, 'skip': why the node is left alone, or ''}.
    drain requeues every job that holds the node: each gets SIGTERM, checkpoints and waits to run
    again; one Slurm may not requeue (submitted without --requeue) skips the node rather than
    being killed. wait waits for them all; skip leaves a node with any job alone."""
    if mode not in JOB_MODES:
        raise ValueError(f"upgrade_driver_jobs must be one of {', '.join(JOB_MODES)}, not {mode!r}")
    if not isinstance(jobs, list) or not all(isinstance(job, dict) and job.get("id") for job in jobs):
        raise ValueError(f"the node's Slurm jobs must be a list of jobs with an id, not {jobs!r}")

    def named(job: dict) -> str:
        return f"job {job['id']} ({job.get('name') or '?'}, {job.get('user') or '?'}, {job.get('state') or '?'})"

    ids = [str(job["id"]) for job in jobs]
    if not jobs:
        return {"requeue": [], "wait": [], "skip": ""}
    if mode == "skip":
        return {
            "requeue": [],
            "wait": [],
            "skip": f"Slurm runs {', '.join(map(named, jobs))} here and upgrade_driver_jobs is skip: left as it was",
        }
    if mode == "wait":
        return {"requeue": [], "wait": ids, "skip": ""}
    running = [job for job in jobs if job.get("state") in SLURM_REQUEUEABLE_STATES]
    fixed = [job for job in running if not job.get("requeue")]
    if fixed:
        return {
            "requeue": [],
            "wait": [],
            "skip": (
                f"Slurm may not requeue {', '.join(map(named, fixed))} (submitted without --requeue): not killed, "
                "the node left as it was; run again with upgrade_driver_jobs wait, or once the job ended"
            ),
        }
    return {"requeue": [str(job["id"]) for job in running], "wait": ids, "skip": ""}
