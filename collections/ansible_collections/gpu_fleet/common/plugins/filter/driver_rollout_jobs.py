"""The rolling driver upgrade's decisions about training jobs (playbooks/upgrade-driver.yml).

A Composer job runs on several hosts at once (playbooks/train.yml records it on each of them
in hf_loader_config_dir/job-JOB.json). Stopping it on one host stops it on all of them (its
ranks agree to stop at the same batch and checkpoint), and it can only start again on all of
them together. So the rollout treats a job as one unit:

- `job_records`: the job records read on a host, checked.
- `schedule`: the canary and the batches, a job's hosts always in the same batch, within the
  availability budget (upgrade_driver_max_unavailable, counted as the GPU Operator counts its
  maxUnavailable: hosts already held or down count against it).
- `budget_stop`: before a batch, whether hosts lost in earlier batches leave it no room.
- `job_drains`: at a batch's start, from every host's fresh read, which units each host stops
  (upgrade_driver_jobs drain), waits for (wait), or why it is skipped.
- `job_restarts`: after the batch, which units start again: a job only when every one of its
  hosts passed; otherwise it stays stopped on all of them, with why.
- `slurm_jobs`: on a Slurm node the rollout holds, what becomes of the Slurm jobs on it. Slurm
  keeps a job whole itself: a requeued job stops on all its nodes and waits, pending, for nodes
  to run on again (the rollout's hold keeps it off this one), so nothing is restarted here.
Nothing here touches a host.
"""

from __future__ import annotations

import base64
import json
import math
import re

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed

JOB_MODES = ("wait", "drain", "skip")
JOB_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Record states that leave a host out of training after its batch (held by the rollout's cordon).
HELD_AFTER = ("failed", "reboot-pending", "unreachable")
BUDGET = re.compile(r"^(?:\d+|(?:100|[1-9]?\d)%)$")


def _records_from_slurp(results) -> list[tuple[str, str]]:
    texts = []
    for result in results or []:
        path = (result.get("item") or {}).get("path") or result.get("source") or "?"
        if result.get("failed") or "content" not in result:
            continue  # removed between the listing and the read: no job
        texts.append((path, base64.b64decode(result["content"]).decode("utf-8", "replace")))
    return texts


def job_records(results) -> dict:
    """The job records of a host (hf_loader_config_dir/job-*.json, as slurp read them):
    {'jobs': [{job, unit, hosts, checkpointed, path}], 'errors': [...]}.

    A record names the job's unit (hf-train@JOB.service) and its hosts by node rank; a job is
    checkpointed when autoresume is on and save_folder is set: only then does a drain lose at
    most the batch in flight."""
    jobs, errors = [], []
    for path, text in _records_from_slurp(results):
        try:
            record = json.loads(text)
        except ValueError as error:
            errors.append(f"{path} is not JSON ({error}): remove it or run playbooks/train.yml again")
            continue
        name = record.get("job") if isinstance(record, dict) else None
        hosts = record.get("hosts") if isinstance(record, dict) else None
        if not (isinstance(name, str) and JOB_NAME.match(name)):
            errors.append(f"{path} names no valid job: remove it or run playbooks/train.yml again")
            continue
        if record.get("unit") != f"hf-train@{name}.service":
            errors.append(f"{path}: unit {record.get('unit')!r} is not hf-train@{name}.service: remove it")
            continue
        if not (isinstance(hosts, list) and hosts and all(isinstance(host, str) and host for host in hosts)):
            errors.append(f"{path}: hosts must be the job's host names by node rank: remove it")
            continue
        autoresume = record.get("autoresume") is True or str(record.get("autoresume")).lower() == "true"
        jobs.append(
            {
                "job": name,
                "unit": record["unit"],
                "hosts": hosts,
                "checkpointed": bool(autoresume and record.get("save_folder")),
                "path": path,
            }
        )
    return {"jobs": sorted(jobs, key=lambda job: job["job"]), "errors": errors}


def _scaled(value, total: int) -> int | None:
    """upgrade_driver_max_unavailable as a host count (None: no budget); a percentage is
    rounded up, as Kubernetes' GetScaledValueFromIntOrPercent(roundUp=true) does for the GPU
    Operator's maxUnavailable."""
    text = str(value).strip()
    if text in ("", "none", "None"):
        return None
    if text.endswith("%"):
        return max(1, math.ceil(int(text[:-1]) * total / 100))
    return int(text)


def budget_errors(value) -> list[str]:
    if value is None or str(value).strip() in ("", "none", "None") or BUDGET.match(str(value).strip()):
        return []
    return [
        'upgrade_driver_max_unavailable must be a host count or a percentage such as 2 or "25%", or "" (no budget); '
        f"got {value!r}"
    ]


def _serial_size(serial, total: int) -> int:
    """A batch's size from upgrade_driver_serial, as Ansible's serial computes it (a percentage
    of the play's hosts, rounded down, at least one host)."""
    text = str(serial).strip()
    if text.endswith("%"):
        return max(1, int(int(text[:-1]) * total / 100))
    return max(1, int(text))


def _job_hosts(plan: dict) -> set[str]:
    return {host for job in plan.get("jobs", []) for host in job["hosts"]}


def _units(hosts: list[str], plans: dict) -> list[list[str]]:
    """Hosts joined by the jobs they run (or a rollout left stopped), in the order of `hosts`."""
    parent = {host: host for host in hosts}

    def root(host):
        while parent[host] != host:
            parent[host] = parent[parent[host]]
            host = parent[host]
        return host

    for host in hosts:
        for mate in _job_hosts(plans.get(host) or {}):
            if mate in parent:
                parent[root(mate)] = root(host)
    groups: dict[str, list[str]] = {}
    for host in hosts:
        groups.setdefault(root(host), []).append(host)
    return sorted(groups.values(), key=lambda unit: hosts.index(unit[0]))


def _taken_down(unit: list[str], plans: dict) -> set[str]:
    """The hosts of a unit that the rollout takes out of training: those it upgrades, and
    their job mates (a drain stops the job on all of them)."""
    upgrade = [host for host in unit if plans[host]["action"] == "upgrade"]
    if not upgrade:
        return set()
    return {host for host in unit if plans[host]["action"] != "skip" and (host in upgrade or len(unit) > 1)}


def _is_idle(host: str, plans: dict) -> bool:
    plan = plans[host]
    return (
        plan["action"] == "upgrade"
        and not plan.get("jobs")
        and not plan.get("busy_units")
        and not plan.get("restart_units")
    )


def _canary_units(units, hosts, plans, spec, groups) -> tuple[list[list[str]], str]:
    if spec in ("", None, "none"):
        return [], ""
    unit_of = {host: unit for unit in units for host in unit}
    upgrading = [unit for unit in units if any(plans[host]["action"] == "upgrade" for host in unit)]
    if spec == "idle":
        idle = [unit for unit in upgrading if len(unit) == 1 and _is_idle(unit[0], plans)]
        if idle:
            return idle[:1], ""
        if not upgrading:
            return [], ""
        return upgrading[:1], (
            f"no idle host to upgrade: the canary is {', '.join(upgrading[0])}, whose training is drained with it"
        )
    if spec == "first":
        named = hosts[:1]
        chosen = [unit_of[hosts[0]]] if hosts else []
    else:
        if spec not in groups:
            raise ValueError(
                f"upgrade_driver_canary {spec!r} is neither 'idle', 'first', '' nor a group of the inventory "
                f"(groups: {', '.join(sorted(g for g in groups if g not in ('all', 'ungrouped')))})"
            )
        members = named = [host for host in hosts if host in set(groups[spec])]
        if not members:
            raise ValueError(f"upgrade_driver_canary group {spec!r} has none of the hosts being upgraded")
        chosen = []
        for host in members:
            if unit_of[host] not in chosen:
                chosen.append(unit_of[host])
    extra = sorted({host for unit in chosen for host in unit} - set(named))
    note = f"the canary takes {', '.join(extra)} too: they share a job with it" if extra else ""
    return chosen, note


def schedule(
    hosts: list[str],
    plans: dict,
    canary="idle",
    groups=None,
    serial="20%",
    max_unavailable="",
    unreachable=None,
) -> dict:
    """The canary and the batches, from each answering host's plan (host_plan), in `hosts` order.

    A job's hosts are always in one batch (drained together, started again together). Batches
    hold about `serial` hosts; a job larger than that is a batch of its own. With a budget
    (max_unavailable), hosts already held (any cordon) or unreachable count against it, and a
    batch never takes more hosts out of training than it leaves room for; a job that cannot
    fit is skipped, with why. Returns {canary, rest, sizes, skipped: {host: reason}, notes,
    unavailable, limit, down: hosts each batch takes out of training}."""
    hosts = list(hosts)
    groups = groups or {}
    unreachable = list(unreachable or [])
    total = len(hosts) + len(unreachable)
    limit = _scaled(max_unavailable, total)
    unavailable = set(unreachable) | {host for host in hosts if plans[host].get("cordons")}
    units = _units(hosts, plans)
    canary_units, note = _canary_units(units, hosts, plans, canary, groups)
    skipped: dict[str, str] = {}

    def fits(batch: list[str], unit: list[str]) -> bool:
        if limit is None:
            return True
        down = set().union(*(_taken_down(u, plans) for u in [*batch_units(batch), unit]))
        return len(unavailable | down) <= limit

    def batch_units(batch: list[str]) -> list[list[str]]:
        return [unit for unit in units if unit[0] in batch]

    def too_big(unit: list[str]) -> None:
        down = _taken_down(unit, plans)
        for host in unit:
            skipped[host] = (
                f"upgrading it takes {', '.join(sorted(down))} out of training ({len(down)} host(s), one job), "
                f"and with {len(unavailable)} host(s) already held or down "
                f"({', '.join(sorted(unavailable)) or 'none'}) that is more than upgrade_driver_max_unavailable "
                f"{max_unavailable} ({limit} of {total}): raise it, or let the job end and run again"
            )

    canary_hosts: list[str] = []
    for unit in canary_units:
        if fits([], unit):
            canary_hosts += unit
        else:
            too_big(unit)
    # A canary the budget left out has its reason in `skipped`.
    notes = [note] if note and canary_hosts else []
    rest_units = [unit for unit in units if unit not in canary_units]
    size = _serial_size(serial, sum(len(unit) for unit in rest_units) or 1)
    batches: list[list[str]] = []
    current: list[str] = []
    for unit in rest_units:
        if not fits([], unit):
            too_big(unit)
            continue
        if current and (len(current) + len(unit) > size or not fits(current, unit)):
            batches.append(current)
            current = []
        current = current + unit
    if current:
        batches.append(current)
    down = {host for unit in units if not any(host in skipped for host in unit) for host in _taken_down(unit, plans)}
    return {
        "canary": canary_hosts,
        "rest": [host for batch in batches for host in batch],
        "sizes": [len(batch) for batch in batches],
        "batches": batches,
        "skipped": skipped,
        "notes": notes,
        "unavailable": sorted(unavailable),
        "limit": limit,
        "down": sorted(down),
    }


def budget_stop(batch: list[str], plan: dict, records: dict, max_unavailable="") -> str:
    """Why the batch may not start (''): hosts that earlier batches left failed,
    reboot-pending or unreachable are held too, and count against the budget."""
    limit = plan.get("limit")
    if limit is None:
        return ""
    lost = {host for host, record in records.items() if (record or {}).get("state") in HELD_AFTER}
    unavailable = set(plan.get("unavailable", [])) | lost
    down = set(batch) & set(plan.get("down", []))
    if len(unavailable | down) <= limit:
        return ""
    return (
        f"the availability budget is spent: {len(unavailable)} host(s) are held or down "
        f"({', '.join(sorted(unavailable))}) and the next batch ({', '.join(batch)}) would take "
        f"{len(down - unavailable)} more out of training, over upgrade_driver_max_unavailable "
        f"{max_unavailable} ({limit}). "
        "Bring the failed hosts back (or lift their cordons), then run the rollout again"
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


class FilterModule:
    """Job-aware filters for playbooks/upgrade-driver.yml (prefix driver_rollout_)."""

    def filters(self):
        functions = [job_records, budget_errors, schedule, budget_stop, job_drains, job_restarts, slurm_jobs]
        return prefixed("driver_rollout_", functions)
