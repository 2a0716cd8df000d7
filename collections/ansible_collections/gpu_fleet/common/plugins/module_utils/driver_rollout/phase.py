"""The driver rollout's phases (upgrade_driver_phase), as pure functions.

A rollout runs whole (`all`: the canary, the pause for a person, the other batches) or in two
runs with an approval between them, as an AWX workflow does it (`canary`, then `rest`):

- `phase_errors`: the phase's settings, checked before any host is touched. Under AWX the pause
  after the canary cannot wait (no terminal): phase `all` with the pause is refused there.
- `phase_schedule`: the schedule a phase runs. `canary` keeps the canary batch only and names
  the hosts left for `rest`; it stops before any drain when no canary can be upgraded while
  hosts still need the upgrade (a rest phase would then never be allowed).
- `canary_mark`: what the canary phase writes on each canary host that passed.
- `rest_gate`: whether `rest` may start. The canary phase marks each canary host that passed
  (upgrade_driver_canary_mark_file, on the host: it outlives the controller, which under AWX is
  a fresh job container each run); `rest` goes on only when at least one target host answers
  with a mark for this very target, runs that target now and holds no cordon of the rollout.
plugins/filter/driver_rollout_phase.py maps the driver_rollout_* phase filters to these
functions. Nothing here touches a host.
"""

from __future__ import annotations

import json

from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.outcome import is_true

PHASES = ("all", "canary", "rest")
NO_CANARY = ("", "none", None)


def phase_errors(phase, canary="idle", pause_after_canary=True, awx_job="") -> list[str]:
    """What is wrong with the phase settings ([]: nothing). `awx_job`: the AWX job's id when the
    run is an AWX job (its awx_job_id or tower_job_id extra var), else ''."""
    if phase not in PHASES:
        return [
            f"upgrade_driver_phase must be all (the whole rollout), canary (the canary batch only) or rest "
            f"(the other batches, after a canary phase passed); got {phase!r}."
        ]
    if phase == "canary" and canary in NO_CANARY:
        return [
            "upgrade_driver_phase=canary needs a canary, but upgrade_driver_canary is empty: set it to idle, "
            "first or a group, or run the whole rollout (upgrade_driver_phase=all)."
        ]
    if phase == "all" and is_true(pause_after_canary) and str(awx_job or "").strip():
        return [
            f"This run is an AWX job ({awx_job}): the pause after the canary has no terminal to wait on and would "
            "roll on to the whole fleet unasked. Run the two phases as two job templates with an approval between "
            "them (upgrade_driver_phase=canary, then upgrade_driver_phase=rest; see docs/fleet.md, "
            "playbooks/awx/driver-rollout-workflow.yml), or set upgrade_driver_pause_after_canary=false to roll on "
            "without a gate."
        ]
    return []


def phase_schedule(schedule: dict, phase="all", plans=None) -> dict:
    """The schedule (driver_rollout_schedule's) the phase runs, with `deferred` (hosts left for
    the rest phase) and `stop` (why the phase stops before any drain, '' when it does not).

    `all` and `rest` run the schedule as it is (`rest` is scheduled without a canary). `canary`
    keeps only the canary batch."""
    if phase not in PHASES:
        raise ValueError(f"upgrade_driver_phase must be one of {', '.join(PHASES)}; got {phase!r}")
    schedule = dict(schedule)
    if phase != "canary":
        return {**schedule, "deferred": [], "stop": ""}
    plans = plans or {}
    deferred = list(schedule.get("rest", []))
    waiting = [host for host in deferred if (plans.get(host) or {}).get("action") == "upgrade"]
    stop = ""
    if not schedule.get("canary") and waiting:
        skipped = schedule.get("skipped") or {}
        why = "; ".join(f"{host}: {reason}" for host, reason in skipped.items()) or "no host qualifies"
        stop = (
            f"upgrade_driver_phase=canary found no canary to upgrade ({why}), while {', '.join(waiting)} still "
            "need the upgrade: nothing was changed. Name a canary (upgrade_driver_canary=first or a group), "
            "or fix what left the canary out, and run the canary phase again"
        )
    notes = list(schedule.get("notes", []))
    if deferred:
        notes.append(f"phase canary: {', '.join(deferred)} are left for the rest phase (upgrade_driver_phase=rest)")
    return {**schedule, "rest": [], "sizes": [], "batches": [], "deferred": deferred, "notes": notes, "stop": stop}


def canary_mark(record: dict, branch, pin="") -> dict:
    """The mark a canary host that passed gets (JSON on the host): the target it passed with and
    the driver it runs. No time in it, so that a second canary run changes nothing."""
    return {
        "phase": "canary",
        "branch": str(branch or ""),
        "version": str(pin or ""),
        "driver": str((record or {}).get("loaded_version") or ""),
    }


def _mark(text) -> dict:
    if isinstance(text, dict):
        return text
    try:
        mark = json.loads(text or "")
    except ValueError:
        return {}
    return mark if isinstance(mark, dict) else {}


def rest_gate(hosts: list[str], plans: dict, marks: dict, branch, pin="", cordon_owner="upgrade-driver") -> str:
    """Why the rest phase may not start ('' when it may).

    It may when at least one of `hosts` answered (has a plan), carries the canary phase's mark
    for this very target (branch and version as given now), runs the target now (its plan is
    'current') and holds no cordon of the rollout (`cordon_owner`: the rollout lifts its own
    cordon only from a host that passed, gate included). `marks`: each host's mark file as read
    ('' when it has none)."""
    target = {"branch": str(branch or ""), "version": str(pin or "")}
    proof, seen = [], []
    for host in hosts:
        plan = plans.get(host)
        mark = _mark((marks or {}).get(host))
        if plan is None or not mark:
            continue
        marked = {"branch": str(mark.get("branch", "")), "version": str(mark.get("version", ""))}
        if marked != target:
            seen.append(f"{host} passed a canary of {marked['version'] or 'branch ' + marked['branch']}")
        elif plan.get("action") != "current":
            seen.append(f"{host} was a canary of this target but runs {plan.get('loaded_version') or 'no driver'} now")
        elif cordon_owner in (plan.get("cordons") or []):
            seen.append(f"{host} was a canary of this target but holds the rollout's cordon ({cordon_owner})")
        else:
            proof.append(host)
    if proof:
        return ""
    wanted = pin or f"branch {branch}"
    answered = [host for host in hosts if host in plans]
    found = ("; ".join(seen) + ". ") if seen else ""
    return (
        f"upgrade_driver_phase=rest refused: no host shows that a canary of {wanted} passed "
        f"({len(answered)} of {len(hosts)} host(s) answered). {found}Run -e upgrade_driver_phase=canary with the "
        "same target first; once it passed (and was approved), run -e upgrade_driver_phase=rest. Nothing was changed"
    )
