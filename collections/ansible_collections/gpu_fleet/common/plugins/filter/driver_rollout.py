"""The rolling driver upgrade's decisions (playbooks/upgrade-driver.yml), as pure functions.

- `host_plan`: from what a host runs (its loaded driver, its active training units, its
  cordons), what the rollout does there: nothing (already on the target), skip it (busy, with
  upgrade_driver_busy=skip, or cordoned with skip_rollouts), or drain and upgrade it. Read
  before anything changes, and again when the host's batch starts.
- `outcome`: after the nvidia_driver role, what the host is: upgraded or current only when
  the loaded driver is the target and the role verified it; reboot-pending when the role
  deferred the reboot; failed otherwise (the install deferred under a job names the job).
- `canary`, batches and jobs: module_utils/driver_rollout/.
- `batch_verdict`: after a batch, whether the rollout goes on (max_fail_percentage).
- `report`: one row per host (its driver before and after, its state, why) and why the
  rollout stopped, if it did; `report_markdown` renders it.
The runbook gathers the inputs on the hosts and acts; nothing here touches a host.
"""

from __future__ import annotations

import re

from ansible_collections.gpu_fleet.common.plugins.filter.cordon import text as cordon_text
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.job_records import JOB_MODES
from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.probe import (
    parse_proc_version,
    parse_units,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import (
    pin_in_branch,
    valid_branch,
    valid_pin,
    version_matches,
)

# A record's state, in the order the report sorts them (worst first).
STATES = ("failed", "reboot-pending", "unreachable", "skipped", "not-reached", "upgraded", "current")
# States that count against a batch (max_fail_percentage) and make the rollout's run fail.
NOT_DONE = ("failed", "reboot-pending", "unreachable")
SERIAL = re.compile(r"^(?:[1-9]\d*|(?:100|[1-9]\d?)%)$")


def valid_serial(value) -> bool:
    """A batch size as `serial` takes it: a host count (>= 1) or a percentage (1-100%)."""
    return isinstance(value, int | str) and not isinstance(value, bool) and bool(SERIAL.match(str(value).strip()))


def target_errors(branch, pin) -> list[str]:
    """What is wrong with the target the rollout was given (empty: a valid target)."""
    if not valid_branch(branch):
        return [f'upgrade_driver_branch must be a driver branch of three digits, quoted, such as "580"; got {branch!r}']
    if pin and not valid_pin(pin):
        return [f'upgrade_driver_version must be an exact driver version such as "{branch}.95.05"; got {pin!r}']
    if pin and not pin_in_branch(pin, branch):
        fix = f"set the branch to {pin.split('.')[0]}"
        return [f"upgrade_driver_version {pin} is not of upgrade_driver_branch {branch}: {fix}"]
    return []


def target_text(branch, pin="") -> str:
    return pin or f"branch {branch} (its newest, for hosts on another branch)"


def loaded_version(proc_version_text: str) -> str:
    """The loaded driver's version from /proc/driver/nvidia/version ('' when none is loaded)."""
    return parse_proc_version(proc_version_text)["version"]


def host_plan(
    proc_version_text: str, units_text: str, branch, pin="", jobs_mode="drain", drained_text="", cordons=None, jobs=None
) -> dict:
    """What the rollout does on one host, from /proc/driver/nvidia/version, its active training
    units, the units an earlier rollout drained there and did not start again (one a line), its
    cordons (gpu_fleet.common.cordon_parse) and its job records
    (gpu_fleet.common.driver_rollout_job_records).

    A cordon with skip_rollouts keeps the host out, whatever it runs ('skip', with the
    cordon's reason). Other cordons do not change the plan; the rollout never lifts one it did
    not set, and keeps the host's training stopped while one is left. A job record that cannot
    be read skips the host: the rollout would not know which hosts its job spans.

    A host whose loaded driver already is the target is only verified again, its training
    left running ('current'); the others are upgraded ('upgrade'), or, with jobs_mode 'skip',
    skipped while a training unit is active. What happens to the jobs (drained whole, waited
    for) is decided for the whole batch (driver_rollout_job_drains): `jobs` lists the recorded
    jobs whose unit is active here or was left stopped by an earlier rollout.
    """
    if jobs_mode not in JOB_MODES:
        raise ValueError(f"upgrade_driver_jobs must be one of {', '.join(JOB_MODES)}; got {jobs_mode!r}")
    jobs = jobs or {"jobs": [], "errors": []}
    loaded = loaded_version(proc_version_text)
    busy = parse_units(units_text)
    left_stopped = sorted({line.strip() for line in (drained_text or "").splitlines() if line.strip()})
    skip_marks = [cordon for cordon in cordons or [] if cordon.get("skip_rollouts")]
    if skip_marks:
        action = "skip"
        reason = f"cordoned out of rollouts: {cordon_text(skip_marks)}"
    elif jobs.get("errors"):
        action = "skip"
        reason = "its job records cannot be read: " + "; ".join(jobs["errors"])
    elif loaded and version_matches(loaded, pin, branch):
        action, reason = "current", f"already runs {loaded}"
        if not pin:
            # As nvidia_driver keeps a host on its branch between runs (no drift), a branch target
            # does not move a host inside the branch; the report says how to.
            reason += f", of branch {branch}: name the version to move inside the branch (upgrade_driver_version)"
    elif busy and jobs_mode == "skip":
        action, reason = "skip", f"training runs ({', '.join(busy)}) and upgrade_driver_jobs is skip"
    else:
        action = "upgrade"
        reason = f"runs {loaded or 'no driver'}, wanted {target_text(branch, pin)}"
    return {
        "action": action,
        "reason": reason,
        "loaded_version": loaded,
        "busy_units": busy,
        "restart_units": left_stopped,
        "jobs": [
            {**job, "active": job["unit"] in busy}
            for job in jobs.get("jobs", [])
            if job["unit"] in busy or job["unit"] in left_stopped
        ],
        "cordons": [cordon.get("owner", "") for cordon in cordons or []],
    }


def _true(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "yes", "1")


def outcome(plan: dict, driver_report: dict, branch, pin="", check_mode=False) -> dict:
    """What a host is after the nvidia_driver role ran there (its nvidia_driver_report).

    'upgraded' (or 'current' for a host that was on the target) only when the loaded driver is
    the target and the role verified it; 'reboot-pending' when the role installed the target
    but deferred the reboot (a job started on the host, say): the old module is still loaded
    and training there would meet a driver/library mismatch; 'failed' otherwise. `passed`:
    whether the host may go back to training. In check mode nothing was installed: the
    plan's action says what would be.
    """
    action = plan["action"]
    before = plan.get("loaded_version", "")
    if action == "skip":
        return {"state": "skipped", "reason": plan["reason"], "loaded_version": before, "passed": False}
    if check_mode:
        state = "upgraded" if action == "upgrade" else "current"
        reason = f"would install {target_text(branch, pin)}" if action == "upgrade" else plan["reason"]
        return {"state": state, "reason": reason, "loaded_version": before, "passed": True}
    report = driver_report or {}
    loaded = str(report.get("loaded_version") or "")
    installed = str(report.get("driver_version") or "")
    if _true(report.get("install_deferred")):
        # The role found a training unit running and changed nothing: the job was started
        # after the drain by something the cordon does not hold (not the training unit's gate).
        blocked = list(report.get("install_blocked_by") or [])
        units = ", ".join(blocked) or "a unit of upgrade_driver_training_units"
        reason = (
            f"the install of {target_text(branch, pin)} was deferred: training runs on the host ({units}), "
            f"started after its drain; it still runs {loaded or 'no driver'}, nothing was changed. Stop {units} "
            "(or let it end) and run the rollout again."
        )
        return {"state": "failed", "reason": reason, "loaded_version": loaded, "passed": False}
    if _true(report.get("reboot_required")):
        blocked = list(report.get("reboot_blocked_by") or [])
        why = "; ".join(report.get("reboot_reasons") or []) or "the installed module is not the loaded one"
        reason = (
            f"installed {installed or target_text(branch, pin)} but still runs {loaded or 'no driver'}: the reboot "
            f"was deferred ({why}"
            + (f"; training started during the rollout: {', '.join(blocked)}" if blocked else "")
            + "). Training stays held: it would meet a driver/library mismatch here. Run the rollout again once "
            "the host is idle, or reboot it."
        )
        return {"state": "reboot-pending", "reason": reason, "loaded_version": loaded, "passed": False}
    if loaded and version_matches(loaded, pin, branch) and _true(report.get("verified")):
        if action == "upgrade":
            reboot = ", rebooted" if loaded != before else ", no reboot needed"
            reason = f"now runs {loaded}{reboot}, verified"
        else:
            reason = f"{plan['reason']}, verified"
        return {
            "state": "upgraded" if action == "upgrade" else "current",
            "reason": reason,
            "loaded_version": loaded,
            "passed": True,
        }
    problems = "; ".join(report.get("problems") or []) or "not verified"
    reason = f"runs {loaded or 'no driver'}, wanted {target_text(branch, pin)}: {problems}"
    return {"state": "failed", "reason": reason, "loaded_version": loaded, "passed": False}


def batch_verdict(batch: list[str], records: dict, max_fail_percentage, number=1) -> dict:
    """Whether the rollout goes on after a batch.

    `records` maps hosts to their rollout record; a host of the batch without one did not
    finish its steps (unreachable, or an error the runbook could not rescue) and counts as
    failed. The rollout stops when more than max_fail_percentage of the batch failed,
    as Ansible's own max_fail_percentage counts.
    """
    batch = list(batch)
    states = {host: (records.get(host) or {}).get("state", "unreachable") for host in batch}
    failed = [host for host in batch if states[host] in NOT_DONE]
    percent = 100.0 * len(failed) / len(batch) if batch else 0.0
    stop = bool(failed) and percent > float(max_fail_percentage)
    reason = ""
    if stop:
        why = "; ".join(
            f"{host}: {(records.get(host) or {}).get('reason') or 'did not finish (unreachable?)'}" for host in failed
        )
        reason = (
            f"batch {number} ({', '.join(batch)}): {len(failed)} of {len(batch)} host(s) failed ({percent:.0f}%), "
            f"more than upgrade_driver_max_fail_percentage {max_fail_percentage}%. {why}"
        )
    return {"number": number, "hosts": batch, "failed": failed, "percent": percent, "stop": stop, "reason": reason}


def report(
    hosts: list[str],
    before: dict,
    records: dict,
    batches: list[dict],
    target: dict,
    stopped="",
    check_mode=False,
    skipped=None,
    notes=None,
    phase="all",
    canary=None,
    deferred=None,
) -> dict:
    """One row per host and the rollout's outcome.

    `before`: each host's host_plan (read before anything changed; absent: unreachable at
    the start). `records`: what the rollout did on the hosts it reached. `batches`: each
    batch's verdict with its seconds. A host neither recorded nor unreachable was never
    reached: it keeps its driver and its training. `skipped`: hosts the schedule left out
    (the availability budget), with why. `phase` (upgrade_driver_phase): in `canary`, `canary`
    are the canary's hosts and `deferred` the hosts left for the rest phase: the report says
    whether the canary passed and how to go on.
    """
    records = {**{host: {"state": "skipped", "reason": why} for host, why in (skipped or {}).items()}, **records}
    rows = []
    for host in hosts:
        plan = before.get(host)
        record = records.get(host)
        if plan is None:
            row = {"state": "unreachable", "before": "", "after": "", "detail": "unreachable when the rollout started"}
        elif record is None and host in (deferred or []):
            row = {
                "state": "not-reached",
                "before": plan["loaded_version"],
                "after": plan["loaded_version"],
                "detail": "left for the rest phase (upgrade_driver_phase=rest): its driver and training were "
                "not touched",
            }
        elif record is None:
            reached = any(host in batch.get("hosts", []) for batch in batches)
            row = {
                "state": "unreachable" if reached else "not-reached",
                "before": plan["loaded_version"],
                "after": "" if reached else plan["loaded_version"],
                "detail": "did not finish its steps (unreachable during the upgrade?)"
                if reached
                else "the rollout stopped before this host: its driver and training were not touched",
            }
        else:
            row = {
                "state": record["state"],
                "before": plan["loaded_version"],
                "after": record.get("loaded_version", ""),
                "detail": record.get("reason", ""),
            }
        if record:
            row["seconds"] = record.get("seconds")
            for key in ("drained", "restarted", "left_stopped"):
                row[key] = record.get(key, [])
        rows.append({"host": host, **row})
    counts = {state: sum(1 for row in rows if row["state"] == state) for state in STATES}
    durations = [batch["seconds"] for batch in batches if batch.get("seconds") is not None]
    canary_passed = [host for host in canary or [] if (records.get(host) or {}).get("state") in ("upgraded", "current")]
    return {
        "phase": phase,
        "canary_passed": canary_passed if phase == "canary" else [],
        "deferred": list(deferred or []) if phase == "canary" else [],
        "target": target,
        "rows": sorted(rows, key=lambda row: (STATES.index(row["state"]), hosts.index(row["host"]))),
        "counts": {state: count for state, count in counts.items() if count},
        "batches": batches,
        "batch_seconds": durations,
        "fleet_seconds": round(sum(durations), 1),
        "stopped": stopped,
        "notes": [note for note in notes or [] if note],
        "check_mode": bool(check_mode),
        # A canary phase whose canary did not pass (skipped at its batch, say) has not done its job.
        "ok": not stopped
        and not any(counts[state] for state in NOT_DONE)
        and not (phase == "canary" and canary and not canary_passed),
    }


def headline(doc: dict) -> str:
    """Why the rollout stopped, or whether every host it should change was changed."""
    if doc["stopped"]:
        return f"**Stopped:** {doc['stopped']}"
    if doc["ok"] and doc.get("phase") == "canary":
        target = target_text(doc["target"]["branch"], doc["target"].get("version", ""))
        left = doc.get("deferred") or []
        if doc.get("canary_passed"):
            go_on = (
                f"The other {len(left)} host(s) were not touched: once you approve, run the rollout again with "
                "-e upgrade_driver_phase=rest and the same target."
                if left
                else "No other host is left for the rest phase."
            )
            return f"**Canary passed:** {', '.join(doc['canary_passed'])} on {target}. {go_on}"
        return "No canary was upgraded: no host needs the upgrade, the rest phase has nothing to do."
    if doc["ok"]:
        skipped = doc["counts"].get("skipped", 0)
        kept = f" {skipped} host(s) were skipped and keep their driver (below)." if skipped else ""
        return "Every batch passed." + kept
    if (
        doc.get("phase") == "canary"
        and not doc.get("canary_passed")
        and not any(doc["counts"].get(state) for state in NOT_DONE)
    ):
        return (
            "**No canary passed** (below): the rest phase is refused until one does; run the canary phase again "
            "once the reason is fixed."
        )
    not_done = sum(doc["counts"].get(state, 0) for state in NOT_DONE)
    return f"**Not done:** {not_done} host(s) were not upgraded (below)."


def report_markdown(doc: dict) -> str:
    """The report as Markdown: the outcome, the batches with their times, one row per host."""
    target = doc["target"]
    skipped = [row for row in doc["rows"] if row["state"] == "skipped"]
    lines = [
        "# Driver rollout" + (f" (phase {doc['phase']})" if doc.get("phase", "all") != "all" else ""),
        "",
        f"Target: {target_text(target['branch'], target.get('version', ''))}.",
        "",
        *(["Check mode: what the rollout would do; no host was changed.", ""] if doc.get("check_mode") else []),
        headline(doc),
        "",
        *[f"Note: {note}." for note in doc.get("notes", [])],
        *([""] if doc.get("notes") else []),
        "Hosts: " + ", ".join(f"{count} {state}" for state, count in doc["counts"].items()) + ".",
        "",
        *(
            [
                "Skipped (left out, with why): "
                + "; ".join(f"{row['host']}: {row['detail']}" for row in skipped)
                + ".",
                "",
            ]
            if skipped
            else []
        ),
        "| batch | hosts | failed | seconds |",
        "| --- | --- | --- | --- |",
    ]
    for batch in doc["batches"]:
        lines.append(
            f"| {batch['number']} | {', '.join(batch['hosts'])} | {', '.join(batch['failed']) or '-'} "
            f"| {batch.get('seconds', '')} |"
        )
    lines += [
        f"| all | | | {doc['fleet_seconds']} |",
        "",
        "| host | state | driver before | driver after | detail |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in doc["rows"]:
        detail = row["detail"]
        if (
            detail
            and not detail.endswith(".")
            and any(row.get(key) for key in ("drained", "restarted", "left_stopped"))
        ):
            detail += "."
        if row.get("drained"):
            detail += f" Drained {', '.join(row['drained'])}."
        if row.get("restarted"):
            detail += f" Started again: {', '.join(row['restarted'])}."
        if row.get("left_stopped"):
            detail += f" Left stopped: {', '.join(row['left_stopped'])}."
        lines.append(
            f"| {row['host']} | {row['state']} | {row['before'] or '-'} | {row['after'] or '-'} | {detail.strip()} |"
        )
    return "\n".join(lines) + "\n"


class FilterModule:
    """Filters for playbooks/upgrade-driver.yml (prefix driver_rollout_)."""

    def filters(self):
        functions = [
            valid_serial,
            target_errors,
            loaded_version,
            host_plan,
            batch_verdict,
            outcome,
            report,
            report_markdown,
        ]
        return prefixed("driver_rollout_", functions)
