"""The runbooks' summaries (the fleet_artifact role's set_stats and artifact file).
plugins/filter/run_results.py maps the state_counts filter to this."""

from __future__ import annotations


def state_counts(states: dict) -> dict:
    """{host: state} -> {state: number of hosts}, by state name: stable keys for the run's stats."""
    counts: dict[str, int] = {}
    for state in states.values():
        counts[str(state)] = counts.get(str(state), 0) + 1
    return dict(sorted(counts.items()))
