"""The rolling driver upgrade's decisions (gpu_fleet.common.driver_rollout_*, playbooks/upgrade-driver.yml)."""

import pytest
from ansible_collections.gpu_fleet.common.plugins.filter.driver_rollout import FilterModule
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.drains import job_drains
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.outcome import batch_verdict, outcome
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.plan import (
    host_plan,
    target_errors,
    valid_serial,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.report import report, report_markdown

# /proc/driver/nvidia/version as the open module writes it (the format parse_proc_version reads).
PROC_580_82 = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.82.07  Release Build  (dvs-builder@U16-I3-B03-4-3)"
    "  Wed Aug 27 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)
PROC_580_95 = PROC_580_82.replace("580.82.07", "580.95.05")
# `systemctl list-units --plain --no-legend --state=active,... hf-train@*.service` lines.
UNITS_BUSY = "hf-train@resnet50.service loaded active running Train resnet50 from the local cache\n"


def drains(plan: dict, mode: str = "drain") -> list[str]:
    """What the batch drains on a host alone in its batch (driver_rollout_job_drains)."""
    return job_drains(["h"], {"h": plan}, mode)["h"]["drain_units"]


def test_filters_are_exported_with_the_prefix():
    names = FilterModule().filters()
    assert {"driver_rollout_host_plan", "driver_rollout_batch_verdict", "driver_rollout_report"} <= set(names)
    assert names["driver_rollout_loaded_version"](PROC_580_95) == "580.95.05"
    assert names["driver_rollout_loaded_version"]("") == ""


@pytest.mark.parametrize("value", [1, 2, "3", "20%", "100%", "1%"])
def test_valid_serial(value):
    assert valid_serial(value)


@pytest.mark.parametrize("value", [0, -1, "0", "0%", "101%", "20 %", "x", True, None, 1.5, "", [1, 2]])
def test_invalid_serial(value):
    assert not valid_serial(value)


def test_target_errors_name_the_variable_and_the_fix():
    assert target_errors("580", "580.95.05") == []
    assert target_errors("590", "") == []
    (error,) = target_errors("580", "590.44.01")
    assert "upgrade_driver_version 590.44.01 is not of upgrade_driver_branch 580" in error
    assert "set the branch to 590" in error
    assert "upgrade_driver_branch" in target_errors("58", "")[0]
    assert "upgrade_driver_version" in target_errors("580", "580.95.5")[0]


def test_host_already_on_the_pin_is_left_alone_even_when_busy():
    plan = host_plan(PROC_580_95, UNITS_BUSY, "580", "580.95.05")
    assert plan["action"] == "current"
    assert drains(plan) == []
    assert plan["loaded_version"] == "580.95.05"


def test_busy_host_is_drained_then_upgraded():
    plan = host_plan(PROC_580_82, UNITS_BUSY, "580", "580.95.05")
    assert plan["action"] == "upgrade"
    assert drains(plan) == ["hf-train@resnet50.service"]
    assert plan["reason"] == "runs 580.82.07, wanted 580.95.05"


def test_busy_host_is_skipped_when_asked():
    plan = host_plan(PROC_580_82, UNITS_BUSY, "580", "580.95.05", "skip")
    assert plan["action"] == "skip"
    assert drains(plan, "skip") == []
    assert "hf-train@resnet50.service" in plan["reason"] and "upgrade_driver_jobs is skip" in plan["reason"]


def test_idle_host_without_a_loaded_driver_is_upgraded_without_a_drain():
    plan = host_plan("", "", "590")
    assert plan == {
        "action": "upgrade",
        "reason": "runs no driver, wanted branch 590 (its newest, for hosts on another branch)",
        "loaded_version": "",
        "busy_units": [],
        "restart_units": [],
        "jobs": [],
        "cordons": [],
    }


def test_units_an_earlier_rollout_left_stopped_start_once_the_host_passes():
    left = "hf-train@old.service\n\n"
    plan = host_plan(PROC_580_82, UNITS_BUSY, "580", "580.95.05", "drain", left)
    assert drains(plan) == ["hf-train@resnet50.service"]
    assert plan["restart_units"] == ["hf-train@old.service"]
    current = host_plan(PROC_580_95, "", "580", "580.95.05", "drain", left)
    assert current["action"] == "current" and current["restart_units"] == ["hf-train@old.service"]
    skipped = host_plan(PROC_580_82, UNITS_BUSY, "580", "580.95.05", "skip", left)
    assert skipped["action"] == "skip" and drains(skipped, "skip") == []


def test_a_branch_target_is_met_by_any_version_of_the_branch():
    within = host_plan(PROC_580_82, "", "580")
    assert within["action"] == "current"
    # The lab's job rehearsal showed it: the report must say that a newer version of the branch
    # is not rolled out by the branch alone, and how it is.
    assert "name the version to move inside the branch (upgrade_driver_version)" in within["reason"]
    assert "move inside" not in host_plan(PROC_580_82, "", "580", "580.82.07")["reason"]
    assert host_plan(PROC_580_82, "", "590")["action"] == "upgrade"


def test_unknown_jobs_mode_is_refused():
    with pytest.raises(ValueError, match="upgrade_driver_jobs"):
        host_plan(PROC_580_82, "", "580", "", "kill")


def test_batch_goes_on_when_all_hosts_pass():
    verdict = batch_verdict(["a", "b"], {"a": {"state": "upgraded"}, "b": {"state": "current"}}, 0, 2)
    assert verdict == {"number": 2, "hosts": ["a", "b"], "failed": [], "percent": 0.0, "stop": False, "reason": ""}


def test_one_failure_stops_at_zero_percent_and_says_why():
    records = {"a": {"state": "upgraded"}, "b": {"state": "failed", "reason": "nvidia-smi lists 1 GPU(s)"}}
    verdict = batch_verdict(["a", "b"], records, 0, 3)
    assert verdict["stop"] and verdict["failed"] == ["b"]
    assert verdict["reason"].startswith("batch 3 (a, b): 1 of 2 host(s) failed (50%)")
    assert "b: nvidia-smi lists 1 GPU(s)" in verdict["reason"]


def test_failures_up_to_the_limit_go_on_more_stop():
    records = {"a": {"state": "failed"}, "b": {"state": "upgraded"}}
    assert not batch_verdict(["a", "b"], records, 50)["stop"]  # 50% is not more than 50%
    assert batch_verdict(["a", "b"], records, 49)["stop"]
    assert not batch_verdict(["a", "b"], {"a": {"state": "failed"}, "b": {"state": "failed"}}, 100)["stop"]


def test_a_host_without_a_record_counts_as_failed():
    verdict = batch_verdict(["a", "b"], {"a": {"state": "upgraded"}}, 0)
    assert verdict["failed"] == ["b"]
    assert "b: did not finish (unreachable?)" in verdict["reason"]


def test_report_rows_and_outcome():
    hosts = ["h1", "h2", "h3", "h4", "h5"]
    before = {
        "h1": host_plan(PROC_580_82, UNITS_BUSY, "580", "580.95.05"),
        "h2": host_plan(PROC_580_82, "", "580", "580.95.05"),
        "h3": host_plan(PROC_580_95, "", "580", "580.95.05"),
        "h4": host_plan(PROC_580_82, UNITS_BUSY, "580", "580.95.05"),
    }
    records = {
        "h1": {
            "state": "upgraded",
            "loaded_version": "580.95.05",
            "reason": "now runs 580.95.05",
            "drained": ["hf-train@resnet50.service"],
            "restarted": ["hf-train@resnet50.service"],
            "seconds": 40.0,
        },
        "h2": {"state": "failed", "loaded_version": "580.95.05", "reason": "verify: 1 GPU", "seconds": 30},
        "h3": {"state": "current", "loaded_version": "580.95.05", "reason": "already runs 580.95.05"},
    }
    batches = [
        {"number": 1, "hosts": ["h1"], "failed": [], "seconds": 41.5},
        {"number": 2, "hosts": ["h2", "h3"], "failed": ["h2"], "seconds": 33.0},
    ]
    doc = report(hosts, before, records, batches, {"branch": "580", "version": "580.95.05"}, "batch 2 ...")
    rows = {row["host"]: row for row in doc["rows"]}
    assert [row["host"] for row in doc["rows"]] == ["h2", "h5", "h4", "h1", "h3"]  # worst first
    assert rows["h4"]["state"] == "not-reached"
    assert rows["h4"]["before"] == rows["h4"]["after"] == "580.82.07"  # kept its driver
    assert rows["h5"]["state"] == "unreachable" and "when the rollout started" in rows["h5"]["detail"]
    assert rows["h1"]["after"] == "580.95.05"
    assert doc["counts"] == {"failed": 1, "unreachable": 1, "not-reached": 1, "upgraded": 1, "current": 1}
    assert doc["fleet_seconds"] == 74.5
    assert not doc["ok"]
    text = report_markdown(doc)
    assert "**Stopped:** batch 2 ..." in text
    row_h1 = (
        "| h1 | upgraded | 580.82.07 | 580.95.05 | now runs 580.95.05. "
        "Drained hf-train@resnet50.service. Started again:"
    )
    assert row_h1 in text
    assert "| 2 | h2, h3 | h2 | 33.0 |" in text
    assert "| all | | | 74.5 |" in text


def test_report_of_a_full_rollout_is_ok():
    before = {"h1": host_plan(PROC_580_82, "", "580", "580.95.05")}
    records = {"h1": {"state": "upgraded", "loaded_version": "580.95.05", "reason": "ok"}}
    batches = [{"number": 1, "hosts": ["h1"], "failed": [], "seconds": 10.0}]
    doc = report(["h1"], before, records, batches, {"branch": "580", "version": "580.95.05"})
    assert doc["ok"] and doc["counts"] == {"upgraded": 1}
    assert "Every batch passed.\n\nHosts: 1 upgraded." in report_markdown(doc)


def test_a_failed_host_that_was_drained_says_its_training_stays_stopped():
    before = {"h1": host_plan(PROC_580_82, UNITS_BUSY, "580", "580.95.05")}
    units = ["hf-train@resnet50.service"]
    records = {"h1": {"state": "failed", "reason": "x.", "drained": units, "restarted": [], "left_stopped": units}}
    doc = report(["h1"], before, records, [{"number": 1, "hosts": ["h1"], "failed": ["h1"]}], {"branch": "580"}, "")
    assert "Left stopped: hf-train@resnet50.service." in report_markdown(doc)
    assert not doc["ok"]


def test_a_host_reached_without_a_record_is_unreachable_not_untouched():
    before = {"h1": host_plan(PROC_580_82, "", "580", "580.95.05")}
    doc = report(["h1"], before, {}, [{"number": 1, "hosts": ["h1"], "failed": ["h1"]}], {"branch": "580"}, "stop")
    assert doc["rows"][0]["state"] == "unreachable"
    assert doc["rows"][0]["after"] == ""


def test_a_check_mode_report_says_nothing_was_changed():
    before = {"h1": host_plan(PROC_580_82, "", "580", "580.95.05")}
    records = {"h1": {"state": "upgraded", "loaded_version": "580.82.07", "reason": "now runs 580.82.07"}}
    batches = [{"number": 1, "hosts": ["h1"], "failed": []}]
    doc = report(["h1"], before, records, batches, {"branch": "580", "version": "580.95.05"}, "", True)
    assert doc["check_mode"]
    assert "Check mode: what the rollout would do; no host was changed." in report_markdown(doc)
    assert "Check mode" not in report_markdown({**doc, "check_mode": False})


# ---- cordons, a fresh read per batch, and what a host is after the role ----

OPERATOR_SKIP = {"owner": "operator", "reason": "RMA 1234", "user": "alice", "at": "t", "skip_rollouts": True}
OPERATOR_HOLD = {**OPERATOR_SKIP, "skip_rollouts": False}
# nvidia_driver_report as the role sets it (templated values arrive as strings or booleans).
VERIFIED_95 = {"loaded_version": "580.95.05", "driver_version": "580.95.05", "reboot_required": False, "verified": True}


def test_a_cordon_with_skip_rollouts_keeps_even_a_busy_outdated_host_out():
    plan = host_plan(PROC_580_82, UNITS_BUSY, "580", "580.95.05", "drain", "", [OPERATOR_SKIP])
    assert plan["action"] == "skip" and drains(plan) == []
    assert plan["reason"] == "cordoned out of rollouts: operator (alice, t): RMA 1234 [keeps the host out of rollouts]"


def test_a_cordon_without_skip_rollouts_leaves_the_plan_and_is_remembered():
    plan = host_plan(PROC_580_82, UNITS_BUSY, "580", "580.95.05", "drain", "", [OPERATOR_HOLD])
    assert plan["action"] == "upgrade" and drains(plan) == ["hf-train@resnet50.service"]
    assert plan["cordons"] == ["operator"]


def test_a_job_started_after_the_plan_is_drained_by_the_batchs_fresh_read():
    # The same function reads the host when its batch starts: the job seen now is drained.
    first = host_plan(PROC_580_82, "", "580", "580.95.05")
    again = host_plan(PROC_580_82, UNITS_BUSY, "580", "580.95.05")
    assert drains(first) == [] and drains(again) == ["hf-train@resnet50.service"]


def test_a_deferred_reboot_is_reboot_pending_never_upgraded():
    plan = host_plan(PROC_580_82, "", "580", "580.95.05")
    deferred = {
        "loaded_version": "580.82.07",
        "driver_version": "580.95.05",
        "reboot_required": "True",
        "reboot_reasons": ["the loaded module 580.82.07 is not the installed 580.95.05"],
        "reboot_blocked_by": ["hf-train@late.service"],
        "verified": False,
    }
    result = outcome(plan, deferred, "580", "580.95.05")
    assert result["state"] == "reboot-pending" and not result["passed"]
    assert "installed 580.95.05 but still runs 580.82.07" in result["reason"]
    assert "hf-train@late.service" in result["reason"] and "verified" not in result["reason"]


def test_upgraded_needs_the_target_loaded_and_verified():
    plan = host_plan(PROC_580_82, "", "580", "580.95.05")
    assert outcome(plan, VERIFIED_95, "580", "580.95.05") == {
        "state": "upgraded",
        "reason": "now runs 580.95.05, rebooted, verified",
        "loaded_version": "580.95.05",
        "passed": True,
    }
    unverified = outcome(
        plan, {**VERIFIED_95, "verified": "False", "problems": ["2 GPUs, wanted 8"]}, "580", "580.95.05"
    )
    assert unverified["state"] == "failed" and "2 GPUs, wanted 8" in unverified["reason"]
    old_loaded = outcome(plan, {**VERIFIED_95, "loaded_version": "580.82.07"}, "580", "580.95.05")
    assert old_loaded["state"] == "failed" and not old_loaded["passed"]
    assert outcome(plan, {}, "580", "580.95.05")["state"] == "failed"
    current = host_plan(PROC_580_95, "", "580", "580.95.05")
    assert outcome(current, VERIFIED_95, "580", "580.95.05")["state"] == "current"
    assert outcome(plan, {}, "580", "580.95.05", True)["state"] == "upgraded"  # check mode: what would be


def test_reboot_pending_counts_against_the_batch_and_the_run():
    records = {"h1": {"state": "reboot-pending", "reason": "the reboot was deferred"}}
    assert batch_verdict(["h1"], records, 0)["stop"]
    doc = report(["h1"], {"h1": host_plan(PROC_580_82, "", "580")}, records, [], {"branch": "580", "version": ""})
    assert not doc["ok"] and doc["counts"] == {"reboot-pending": 1}


def test_the_report_names_the_skipped_hosts_and_why():
    plans = {"h1": host_plan(PROC_580_82, "", "580", "", "drain", "", [OPERATOR_SKIP])}
    records = {"h1": {"state": "skipped", "reason": plans["h1"]["reason"], "loaded_version": "580.82.07"}}
    doc = report(["h1"], plans, records, [], {"branch": "580", "version": ""})
    assert doc["ok"]
    assert (
        "Skipped (left out, with why): h1: cordoned out of rollouts: operator (alice, t): RMA 1234"
        in report_markdown(doc)
    )
    # Passing batches do not hide hosts that kept their old driver.
    assert "Every batch passed. 1 host(s) were skipped and keep their driver (below)." in report_markdown(doc)


def test_hosts_the_schedule_left_out_are_reported_skipped_with_the_notes():
    plans = {"h1": host_plan(PROC_580_82, "", "580"), "h2": host_plan(PROC_580_82, "", "580")}
    doc = report(
        ["h1", "h2"], plans, {}, [], {"branch": "580", "version": ""}, "", False, {"h2": "too big"}, ["a note"]
    )
    states = {row["host"]: (row["state"], row["detail"]) for row in doc["rows"]}
    assert states["h2"] == ("skipped", "too big") and states["h1"][0] == "not-reached"
    assert "Note: a note." in report_markdown(doc)


def test_an_install_deferred_under_a_job_fails_the_host_naming_the_job():
    # The role found training running at the install and changed nothing: the host is not
    # upgraded, and the reason names the unit that blocked it, not "not verified".
    plan = host_plan(PROC_580_82, "", "580", "580.95.05")
    deferred = {
        "loaded_version": "580.82.07",
        "driver_version": "580.82.07",
        "install_deferred": "True",
        "install_blocked_by": ["lab-train@late.service"],
        "reboot_required": "False",
        "verified": False,
    }
    result = outcome(plan, deferred, "580", "580.95.05")
    assert result["state"] == "failed" and not result["passed"]
    assert "install of 580.95.05 was deferred" in result["reason"]
    assert "lab-train@late.service" in result["reason"] and "still runs 580.82.07" in result["reason"]
    assert "run the rollout again" in result["reason"]


def test_a_batch_whose_hosts_did_not_answer_stops_the_rollout_and_is_reported():
    # What the batch records for a host that does not answer (upgrade-driver-batch.yml).
    records = {
        "h1": {"state": "unreachable", "reason": "did not answer when its batch started; not touched"},
        "h2": {"state": "unreachable", "reason": "did not answer when its batch started; not touched"},
    }
    verdict = batch_verdict(["h1", "h2"], records, 50, 2)
    assert verdict["stop"] and verdict["failed"] == ["h1", "h2"]
    plans = {host: host_plan(PROC_580_82, "", "580", "580.95.05") for host in ("h1", "h2")}
    doc = report(["h1", "h2"], plans, records, [verdict], {"branch": "580", "version": "580.95.05"}, "stopped")
    assert not doc["ok"] and doc["counts"] == {"unreachable": 2}
    assert all("did not answer" in row["detail"] for row in doc["rows"])


def test_a_rollout_whose_hosts_never_answered_does_not_say_every_batch_passed():
    doc = report(["h1", "h2"], {}, {}, [], {"branch": "580", "version": "580.95.05"})
    assert not doc["ok"] and doc["counts"] == {"unreachable": 2}
    text = report_markdown(doc)
    assert "Every batch passed." not in text
    assert "**Not done:** 2 host(s) were not upgraded (below)." in text
