"""The hf_seed role's plan (gpu_fleet.common.seed_plan): who copies from whom, in which wave."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.gpu_fleet.common.plugins.filter.hf_seed import FilterModule
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_seed import seed_plan

HOSTS = [f"h{i}" for i in range(1, 9)]


def depth(plan: dict, host: str, sources: list) -> int:
    """Transfers between the source and the host (1 for a host the source serves)."""
    n = 1
    while plan[host] not in sources:
        host = plan[host]
        n += 1
    return n


@pytest.mark.parametrize("per_source", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 4, 8, 13])
def test_fanout_is_one_wave_of_a_breadth_first_tree(n, per_source):
    targets = HOSTS[:n] if n <= 8 else [f"h{i}" for i in range(1, n + 1)]
    (plan,) = seed_plan(targets, ["src"], per_source, True)
    assert sorted(plan) == sorted(targets)
    served = {}
    for target, upstream in plan.items():
        served[upstream] = served.get(upstream, 0) + 1
        assert upstream != target
    assert max(served.values()) <= per_source
    # Level d holds per_source**d hosts: the shallowest tree with that many children each
    # (one transfer per source: a chain, each host passing on what it has received).
    levels, held = 0, 0
    while held < n:
        levels += 1
        held += per_source**levels
    assert max(depth(plan, t, ["src"]) for t in targets) == levels


def test_breadth_first_in_inventory_order():
    (plan,) = seed_plan(HOSTS[:3], ["src"], 1, True)
    assert plan == {"h1": "src", "h2": "h1", "h3": "h2"}


def test_two_transfers_per_source_bfs():
    (plan,) = seed_plan(HOSTS[:6], ["src"], 2, True)
    assert plan == {"h1": "src", "h2": "src", "h3": "h1", "h4": "h1", "h5": "h2", "h6": "h2"}


def test_without_fanout_the_source_serves_in_waves():
    waves = seed_plan(HOSTS[:5], ["src"], 2, False)
    assert waves == [{"h1": "src", "h2": "src"}, {"h3": "src", "h4": "src"}, {"h5": "src"}]


def test_hosts_that_hold_a_copy_serve_after_the_source():
    (plan,) = seed_plan(["h3", "h4", "h5"], ["src", "h1", "h2"], 1, True)
    assert plan == {"h3": "src", "h4": "h1", "h5": "h2"}


def test_a_retry_avoids_the_upstream_that_failed():
    (plan,) = seed_plan(["h3"], ["src", "h1"], 1, True, {"h3": ["src"]})
    assert plan == {"h3": "h1"}
    assert seed_plan(["h3"], ["src"], 1, True, {"h3": ["src"]}) == []


def test_sources_and_duplicates_are_not_targets():
    (plan,) = seed_plan(["h1", "h1", "src", "h2"], ["src"], 2, True)
    assert plan == {"h1": "src", "h2": "src"}


@pytest.mark.parametrize("bad", [0, -1, True, "2"])
def test_bad_per_source_is_refused_by_the_filter_under_its_name(bad):
    with pytest.raises(AnsibleFilterError, match=r"^seed_plan: per_source"):
        FilterModule().filters()["seed_plan"](["h1"], ["src"], bad, True)


def test_no_source_is_refused():
    with pytest.raises(ValueError, match="no source"):
        seed_plan(["h1"], [], 1, True)
