"""The rollout's report: one row per host (its driver before and after, its state, why) and why the
rollout stopped, if it did; report_markdown renders it."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.outcome import (
    NOT_DONE,
    STATES,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.plan import (
    target_text,
)


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
