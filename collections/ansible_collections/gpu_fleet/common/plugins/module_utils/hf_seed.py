"""The hf_seed role's decision: which host copies from which source.

A seed pass gives every host that needs a copy one upstream: the source (the controller's
folder or a seed host), a host that already holds a verified copy, or, with fan-out, a
host that is itself receiving in this pass. `hf-cache-seed pull` copies the files an
upstream has completed while it is still receiving, so every level of the tree copies at
the same time: the run takes about one copy time plus, per level, the time of the file
the level waits for, instead of one copy time per wave of hosts the source alone serves.

Breadth first: each host is given the upstream with a free transfer slot that is closest
to the source (the source, then the hosts that already hold a copy, then the hosts of
this pass in the order they were given an upstream), so with T transfers per source the
tree is as shallow as T children a host allow (T = 1: a chain). Without fan-out only the
source and the holders serve, and hosts beyond their slots wait for a later wave.

plugins/filter/hf_seed.py maps the seed_plan filter to this, and reports its ValueError under
the filter's name.
"""

from __future__ import annotations

from collections import deque


def seed_plan(
    targets: list[str],
    sources: list[str],
    per_source: int = 2,
    fanout: bool = True,
    avoid: dict | None = None,
) -> list[dict[str, str]]:
    """Waves of {target: upstream}: all transfers of a wave run at once, a wave after the
    one before it is done. `sources` hold a complete copy (the source first); `avoid`
    maps a target to the upstreams that failed it (a retry takes another one)."""
    if not isinstance(per_source, int) or isinstance(per_source, bool) or per_source < 1:
        raise ValueError(f"per_source must be a whole number >= 1, not {per_source!r}")
    if not sources:
        raise ValueError("no source holds a copy")
    avoid = {k: set(v) for k, v in (avoid or {}).items()}
    pending = [t for t in dict.fromkeys(targets) if t not in sources]
    waves: list[dict[str, str]] = []
    while pending:
        wave: dict[str, str] = {}
        slots = deque((s, per_source) for s in sources)
        left = []
        for target in pending:
            upstream = _take_slot(slots, avoid.get(target, set()) | {target})
            if upstream is None:
                left.append(target)
                continue
            wave[target] = upstream
            if fanout:
                slots.append((target, per_source))
        if not wave:  # every remaining target avoids every source: nothing left to try
            break
        waves.append(wave)
        pending = left
    return waves


def _take_slot(slots: deque, excluded: set) -> str | None:
    """The first upstream with a free slot that this target may use; one slot taken."""
    for i, (name, free) in enumerate(slots):
        if name in excluded:
            continue
        if free == 1:
            del slots[i]
        else:
            slots[i] = (name, free - 1)
        return name
    return None
