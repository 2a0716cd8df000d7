"""After the nvidia_driver role, what a host is: upgraded or current only when the loaded driver is the
target and the role verified it; reboot-pending when the role deferred the reboot; failed otherwise
(the install deferred under a job names the job). After a batch, whether the rollout goes on
(max_fail_percentage)."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.plan import (
    target_text,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import (
    version_matches,
)

# A record's state, in the order the report sorts them (worst first).
STATES = ("failed", "reboot-pending", "unreachable", "skipped", "not-reached", "upgraded", "current")
# States that count against a batch (max_fail_percentage) and make the rollout's run fail.
NOT_DONE = ("failed", "reboot-pending", "unreachable")


def is_true(value) -> bool:
    """A bool as Ansible passes it: True, or the strings true, yes, 1."""
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
    if is_true(report.get("install_deferred")):
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
    if is_true(report.get("reboot_required")):
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
    if loaded and version_matches(loaded, pin, branch) and is_true(report.get("verified")):
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
