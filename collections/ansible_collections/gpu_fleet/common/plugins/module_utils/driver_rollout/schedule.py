"""The canary and the batches, a job's hosts always in the same batch, within the availability budget
(upgrade_driver_max_unavailable, counted as the GPU Operator counts its maxUnavailable: hosts already
held or down count against it); and before a batch, whether hosts lost earlier leave it room."""

from __future__ import annotations

import math
import re

# Record states that leave a host out of training after its batch (held by the rollout's cordon).
HELD_AFTER = ("failed", "reboot-pending", "unreachable")
BUDGET = re.compile(r"^(?:\d+|(?:100|[1-9]?\d)%)$")


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
