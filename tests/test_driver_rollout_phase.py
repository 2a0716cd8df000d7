"""The driver rollout's phases (gpu_fleet.common.driver_rollout_phase): canary, then rest, with an
approval between the two runs instead of a pause that needs a terminal.

Attacks, each performed: a misspelt phase, a canary phase without a canary, the pause under AWX
(it would roll on unasked), a rest phase with no canary run, with the mark of another target,
with a marked canary that no longer runs the target or is still held by the rollout's cordon,
and a mark that is garbage; the canary phase's schedule must never hold a host of the rest.
"""

from __future__ import annotations

import json

import pytest
from ansible_collections.gpu_fleet.common.plugins.filter.driver_rollout_phase import FilterModule
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.phase import (
    canary_mark,
    phase_errors,
    phase_schedule,
    rest_gate,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.plan import host_plan
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.report import report, report_markdown
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.schedule import schedule

PROC_580_82 = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.82.07  Release Build  (dvs-builder@U16-I3-B03-4-3)"
    "  Wed Aug 27 2025\n"
)
PROC_580_95 = PROC_580_82.replace("580.82.07", "580.95.05")
TARGET = ("580", "580.95.05")
HOSTS = ["gpu-01", "gpu-02", "gpu-03", "gpu-04"]


def plan(proc=PROC_580_82, cordons=None) -> dict:
    return host_plan(proc, "", *TARGET, cordons=cordons)


def mark(branch="580", version="580.95.05") -> str:
    return json.dumps(canary_mark({"loaded_version": version or "580.95.05", "state": "upgraded"}, branch, version))


def test_filters_are_exported_with_the_prefix():
    assert set(FilterModule().filters()) == {
        "driver_rollout_phase_errors",
        "driver_rollout_phase_schedule",
        "driver_rollout_canary_mark",
        "driver_rollout_rest_gate",
    }


@pytest.mark.parametrize("phase", ["all", "canary", "rest"])
def test_the_three_phases_pass_outside_awx(phase):
    assert phase_errors(phase, "idle", True, "") == []


@pytest.mark.parametrize("phase", ["", "Canary", "rollout", None])
def test_a_bad_phase_names_the_variable_and_the_choices(phase):
    (error,) = phase_errors(phase)
    assert error.startswith("upgrade_driver_phase must be all") and "canary" in error and "rest" in error


@pytest.mark.parametrize("canary", ["", "none"])
def test_a_canary_phase_without_a_canary_is_refused(canary):
    (error,) = phase_errors("canary", canary)
    assert "upgrade_driver_canary is empty" in error and "set it to idle, first or a group" in error


def test_under_awx_the_pause_is_refused_in_phase_all_with_both_ways_out():
    (error,) = phase_errors("all", "idle", True, 42)
    assert "AWX job (42)" in error
    assert "two job templates with an approval between them" in error
    assert "upgrade_driver_pause_after_canary=false to roll on without a gate" in error


@pytest.mark.parametrize(("phase", "pause"), [("all", False), ("all", "false"), ("canary", True), ("rest", True)])
def test_under_awx_the_phases_and_a_rollout_without_pause_go_on(phase, pause):
    assert phase_errors(phase, "idle", pause, "42") == []


def _schedule(plans, canary="idle", phase="all"):
    hosts = list(plans)
    made = schedule(hosts, plans, canary if phase != "rest" else "", {}, 1, "")
    return phase_schedule(made, phase, plans)


def test_phase_all_runs_the_schedule_unchanged():
    plans = {host: plan() for host in HOSTS}
    made = schedule(HOSTS, plans, "idle", {}, 1, "")
    assert {k: v for k, v in phase_schedule(made, "all", plans).items() if k not in ("deferred", "stop")} == made


def test_the_canary_phase_keeps_only_the_canary_and_names_the_rest():
    plans = {host: plan() for host in HOSTS}
    made = _schedule(plans, phase="canary")
    assert made["canary"] == ["gpu-01"]
    assert made["rest"] == [] and made["batches"] == [] and made["sizes"] == []
    assert made["deferred"] == ["gpu-02", "gpu-03", "gpu-04"] and made["stop"] == ""
    assert any("left for the rest phase" in note for note in made["notes"])


def test_the_rest_phase_has_no_canary_batch():
    plans = {host: plan() for host in HOSTS}
    plans["gpu-01"] = plan(PROC_580_95)
    made = _schedule(plans, phase="rest")
    assert made["canary"] == [] and made["rest"] == HOSTS and made["stop"] == ""


def test_a_canary_phase_with_no_canary_while_hosts_need_the_upgrade_stops_before_any_drain():
    plans = {host: plan() for host in HOSTS}
    made = phase_schedule({**schedule(HOSTS, plans, "idle", {}, 1, ""), "canary": []}, "canary", plans)
    assert "found no canary to upgrade" in made["stop"] and "nothing was changed" in made["stop"]
    assert made["rest"] == []


def test_a_canary_phase_with_nothing_to_upgrade_does_not_stop():
    plans = {host: plan(PROC_580_95) for host in HOSTS}
    assert _schedule(plans, phase="canary")["stop"] == ""


def test_the_mark_holds_the_target_and_no_time():
    assert canary_mark({"loaded_version": "580.95.05"}, 580, "580.95.05") == {
        "phase": "canary",
        "branch": "580",
        "version": "580.95.05",
        "driver": "580.95.05",
    }


def test_rest_goes_on_when_a_marked_canary_runs_the_target_uncordoned():
    plans = {host: plan() for host in HOSTS}
    plans["gpu-01"] = plan(PROC_580_95)
    assert rest_gate(HOSTS, plans, {"gpu-01": mark()}, *TARGET) == ""


def test_rest_without_a_canary_run_is_refused_with_the_fix():
    plans = {host: plan() for host in HOSTS}
    refusal = rest_gate(HOSTS, plans, {}, *TARGET)
    assert refusal.startswith("upgrade_driver_phase=rest refused: no host shows that a canary of 580.95.05 passed")
    assert "-e upgrade_driver_phase=canary with the same target first" in refusal
    assert "Nothing was changed" in refusal


def test_a_host_on_the_target_without_a_mark_is_no_canary():
    # site.yml may have installed the target there: no canary phase ran, no gate was passed.
    plans = {host: plan(PROC_580_95) for host in HOSTS}
    assert rest_gate(HOSTS, plans, {}, *TARGET)


@pytest.mark.parametrize(
    ("target", "why"),
    [(("580", ""), "passed a canary of 580.95.05"), (("590", "590.10.01"), "passed a canary of 580.95.05")],
)
def test_the_mark_of_another_target_is_refused(target, why):
    plans = {host: plan(PROC_580_95) for host in HOSTS}
    refusal = rest_gate(HOSTS, plans, {"gpu-01": mark()}, *target)
    assert refusal and f"gpu-01 {why}" in refusal


def test_a_marked_canary_that_no_longer_runs_the_target_is_refused():
    plans = {host: plan() for host in HOSTS}  # rolled back since, or the module was swapped
    refusal = rest_gate(HOSTS, plans, {"gpu-01": mark()}, *TARGET)
    assert "gpu-01 was a canary of this target but runs 580.82.07 now" in refusal


def test_a_marked_canary_still_held_by_the_rollouts_cordon_is_refused():
    cordons = [{"owner": "upgrade-driver", "reason": "the health gate failed", "skip_rollouts": False}]
    plans = {host: plan() for host in HOSTS}
    plans["gpu-01"] = plan(PROC_580_95, cordons=cordons)
    refusal = rest_gate(HOSTS, plans, {"gpu-01": mark()}, *TARGET, "upgrade-driver")
    assert "holds the rollout's cordon (upgrade-driver)" in refusal
    # A person's cordon is not the rollout's verdict on the driver.
    plans["gpu-01"] = plan(PROC_580_95, cordons=[{"owner": "ops", "reason": "disk", "skip_rollouts": False}])
    assert rest_gate(HOSTS, plans, {"gpu-01": mark()}, *TARGET, "upgrade-driver") == ""


@pytest.mark.parametrize("garbage", ["", "not json", "[1, 2]", "null"])
def test_a_garbage_mark_is_no_mark(garbage):
    plans = {host: plan(PROC_580_95) for host in HOSTS}
    assert rest_gate(HOSTS, plans, {"gpu-01": garbage}, *TARGET)


def test_a_marked_canary_that_does_not_answer_proves_nothing():
    plans = {host: plan() for host in HOSTS[1:]}  # gpu-01 unreachable: no plan
    refusal = rest_gate(HOSTS, plans, {"gpu-01": mark()}, *TARGET)
    assert "(3 of 4 host(s) answered)" in refusal


def _canary_report(records, deferred=("gpu-02", "gpu-03")):
    hosts = ["gpu-01", *deferred]
    before = {host: plan() for host in hosts}
    target = {"branch": "580", "version": "580.95.05"}
    batches = [{"number": 1, "hosts": ["gpu-01"], "failed": [], "percent": 0.0, "stop": False, "seconds": 9.0}]
    return report(hosts, before, records, batches, target, "", False, {}, [], "canary", ["gpu-01"], list(deferred))


def test_the_canary_report_says_it_passed_and_how_to_go_on():
    doc = _canary_report(
        {"gpu-01": {"state": "upgraded", "reason": "now runs 580.95.05", "loaded_version": "580.95.05"}}
    )
    assert doc["ok"] and doc["canary_passed"] == ["gpu-01"]
    text = report_markdown(doc)
    assert "# Driver rollout (phase canary)" in text
    assert "**Canary passed:** gpu-01 on 580.95.05" in text and "-e upgrade_driver_phase=rest" in text
    rows = {row["host"]: row for row in doc["rows"]}
    assert rows["gpu-02"]["state"] == "not-reached" and "left for the rest phase" in rows["gpu-02"]["detail"]
    assert rows["gpu-02"]["after"] == "580.82.07"


def test_a_canary_that_failed_fails_the_canary_phase():
    doc = _canary_report({"gpu-01": {"state": "failed", "reason": "not verified", "loaded_version": "580.82.07"}})
    assert not doc["ok"] and "Canary passed" not in report_markdown(doc)


def test_a_canary_skipped_at_its_batch_is_no_pass():
    doc = _canary_report({"gpu-01": {"state": "skipped", "reason": "job resnet50 writes no checkpoint"}})
    assert not doc["ok"]
    assert "**No canary passed**" in report_markdown(doc)


def test_phase_all_reports_as_before():
    hosts = ["gpu-01"]
    target = {"branch": "580", "version": "580.95.05"}
    records = {"gpu-01": {"state": "upgraded", "reason": "now runs 580.95.05", "loaded_version": "580.95.05"}}
    doc = report(hosts, {"gpu-01": plan()}, records, [], target)
    assert doc["ok"] and doc["phase"] == "all" and doc["canary_passed"] == [] and doc["deferred"] == []
    text = report_markdown(doc)
    assert text.startswith("# Driver rollout\n") and "Every batch passed." in text
