"""A batch's training units: at its start which units each host stops (upgrade_driver_jobs drain) or
waits for (wait), or why it is skipped; after it, which start again: a job only when every one of its
hosts passed, otherwise it stays stopped on all of them, with why."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.job_records import (
    JOB_MODES,
)


def job_drains(batch: list[str], plans: dict, mode="drain", rollout_hosts=None) -> dict:
    """At a batch's start, from every batch host's fresh plan: {host: {action, reason,
    drain_units, wait_units, jobs}}.

    drain: a job is stopped on every one of its hosts when any of them is upgraded; it must be
    checkpointed (autoresume with a save_folder), and all its hosts must be in this batch (a
    job started since the rollout was planned may span others), or its hosts are skipped, with
    why: a drain never loses a job's work silently. A unit no job record names is drained on
    its own host. wait: the upgraded hosts wait for their training to end (the cordon keeps
    new work off). skip: host_plan already skipped busy hosts."""
    if mode not in JOB_MODES:
        raise ValueError(f"upgrade_driver_jobs must be one of {', '.join(JOB_MODES)}; got {mode!r}")
    batch = list(batch)
    rollout_hosts = set(rollout_hosts or batch)
    decisions = {
        host: {
            "action": plans[host]["action"],
            "reason": plans[host]["reason"],
            "drain_units": [],
            "wait_units": [],
            "jobs": [],
        }
        for host in batch
    }
    active_jobs: dict[str, dict] = {}
    for host in batch:
        for job in plans[host].get("jobs", []):
            if job.get("active"):
                entry = active_jobs.setdefault(job["job"], {**job, "hosts": list(job["hosts"]), "running_on": []})
                entry["hosts"] = sorted(set(entry["hosts"]) | set(job["hosts"]))
                entry["checkpointed"] = entry["checkpointed"] and job["checkpointed"]
                entry["running_on"].append(host)
    for name, job in sorted(active_jobs.items()):
        in_batch = [host for host in job["hosts"] if host in decisions]
        if not any(decisions[host]["action"] == "upgrade" for host in in_batch):
            continue
        outside = [host for host in job["hosts"] if host not in decisions]
        why = ""
        if mode == "drain" and outside:
            where = (
                "not in this rollout"
                if any(host not in rollout_hosts for host in outside)
                else "in another batch, or not answering"
            )
            why = (
                f"job {name} also runs on {', '.join(outside)} ({where}); it started after the rollout was planned, "
                "or the rollout does not cover those hosts: a drain here would stop it there too. Add them to "
                "upgrade_driver_hosts, or let the job end (upgrade_driver_jobs=wait) and run again"
            )
        elif mode == "drain" and not job["checkpointed"]:
            why = (
                f"job {name} writes no checkpoint it could resume from (autoresume off or no save_folder): a drain "
                "would lose its work. Let it end (upgrade_driver_jobs=wait), or give it autoresume and a shared "
                "save_folder"
            )
        for host in in_batch:
            decision = decisions[host]
            if why:
                decision.update(action="skip", reason=why, drain_units=[], wait_units=[])
            elif mode == "drain":
                decision["drain_units"].append(job["unit"])
                decision["jobs"].append(name)
            else:
                decision["wait_units"].append(job["unit"])
                decision["jobs"].append(name)
    for host in batch:
        decision = decisions[host]
        if decision["action"] != "upgrade":
            continue
        recorded = {job["unit"] for job in plans[host].get("jobs", [])}
        single = [unit for unit in plans[host].get("busy_units", []) if unit not in recorded]
        key = "drain_units" if mode == "drain" else "wait_units"
        decision[key] = sorted(set(decision[key]) | set(single))
    for decision in decisions.values():
        decision["drain_units"] = sorted(set(decision["drain_units"]))
        decision["wait_units"] = sorted(set(decision["wait_units"]))
        decision["jobs"] = sorted(set(decision["jobs"]))
    return decisions


def job_restarts(batch: list[str], plans: dict, decisions: dict, passed: dict, held=None) -> dict:
    """After the batch: {host: {restart, left_stopped, why}}.

    A job drained now, or left stopped by an earlier rollout, starts again only when every one
    of its hosts is in this batch, passed and is not held by another cordon: its ranks must
    all come back for the rendezvous. Otherwise it stays stopped on all its hosts (the
    drained-units file remembers it), with why. A unit no job record names starts again when
    its own host passed and is not held."""
    batch = list(batch)
    result = {host: {"restart": [], "left_stopped": [], "why": []} for host in batch}
    held = held or {}
    ok = {host: bool(passed.get(host)) and not held.get(host) for host in batch}
    jobs: dict[str, dict] = {}
    for host in batch:
        wanted = set(decisions.get(host, {}).get("drain_units", [])) | set(plans[host].get("restart_units", []))
        for job in plans[host].get("jobs", []):
            if job["unit"] in wanted:
                entry = jobs.setdefault(job["job"], {"unit": job["unit"], "hosts": set(), "on": []})
                entry["hosts"] |= set(job["hosts"])
                entry["on"].append(host)
        recorded = {job["unit"] for job in plans[host].get("jobs", [])}
        for unit in sorted(wanted - recorded):
            result[host]["restart" if ok[host] else "left_stopped"].append(unit)
    for name, job in sorted(jobs.items()):
        missing = sorted(host for host in job["hosts"] if host not in result)
        failed = sorted(host for host in job["hosts"] if host in result and not ok[host])
        if missing or failed:
            why = (
                f"job {name} stays stopped on all its hosts: "
                + "; ".join(
                    ([f"{', '.join(failed)} did not pass or stay held"] if failed else [])
                    + ([f"{', '.join(missing)} not upgraded with it"] if missing else [])
                )
                + f". Start it with playbooks/train.yml -e hf_loader_train_job={name} once they are back"
            )
            for host in job["on"]:
                result[host]["left_stopped"].append(job["unit"])
                result[host]["why"].append(why)
        else:
            for host in job["on"]:
                result[host]["restart"].append(job["unit"])
    for entry in result.values():
        entry["restart"] = sorted(set(entry["restart"]))
        entry["left_stopped"] = sorted(set(entry["left_stopped"]))
        entry["why"] = "; ".join(dict.fromkeys(entry["why"]))
    return result
