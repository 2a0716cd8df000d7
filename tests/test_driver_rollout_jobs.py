"""The driver rollout's job decisions (gpu_fleet.common.driver_rollout_jobs): a multi-node job is
drained, batched and started again as one unit, within the availability budget.

Attacks, each performed: a drain that would stop a job on hosts outside the batch (the job
would break there and never re-form), a drain of a job that writes no checkpoint (its work
lost silently), a restart with one of the job's hosts failed (its ranks would wait forever for
a peer), a job record forged with another unit's name or garbage, and a batch that would take
more hosts out of training than the budget allows.
"""

from __future__ import annotations

import json

import pytest
from ansible_collections.gpu_fleet.common.plugins.filter.driver_rollout_jobs import FilterModule
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.drains import job_drains, job_restarts
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.job_records import job_records
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.plan import host_plan
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.schedule import (
    budget_errors,
    budget_stop,
    schedule,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.slurm_jobs import slurm_jobs

PROC_580_82 = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.82.07  Release Build  (dvs-builder@U16-I3-B03-4-3)"
    "  Wed Aug 27 2025\n"
)
PROC_580_95 = PROC_580_82.replace("580.82.07", "580.95.05")
UNIT = "hf-train@resnet50.service"


def listed(*records, path="/etc/hf-loader/job-resnet50.json") -> list[dict]:
    """The listing entries gpu_fleet.common.path_state returns for the job records with
    listing_contents (roles/hf_loader/tasks/jobs_read.yml): path, size, mtime, text."""
    entries = []
    for record in records:
        text = record if isinstance(record, str) else json.dumps(record)
        entries.append({"path": path, "size": len(text.encode()), "mtime": 1767225600.0, "text": text})
    return entries


def record(hosts, job="resnet50", autoresume=True, save_folder="/shared/ckpt"):
    """A job record as playbooks/train.yml writes it (roles/hf_loader/tasks/train.yml)."""
    return {
        "job": job,
        "unit": f"hf-train@{job}.service",
        "config_file": f"/etc/hf-loader/train-{job}.yaml",
        "node_rank": 0,
        "hosts": hosts,
        "nproc_per_node": 8,
        "world_size": 8 * len(hosts),
        "master_addr": "10.0.0.1",
        "master_port": 7501,
        "save_folder": save_folder,
        "run_name": job,
        "autoresume": autoresume,
    }


def plan(loaded=PROC_580_82, busy=(), jobs=None, left="", cordons=None, mode="drain"):
    units = "".join(f"{unit} loaded active running x\n" for unit in busy)
    jobs = job_records(listed(*jobs)) if jobs else None
    return host_plan(loaded, units, "580", "580.95.05", mode, left, cordons, jobs)


OPERATOR_HOLD = {"owner": "operator", "reason": "bad fan", "user": "alice", "at": "t", "skip_rollouts": False}


def test_filters_are_exported_with_the_prefix():
    assert {
        "driver_rollout_job_records",
        "driver_rollout_schedule",
        "driver_rollout_budget_stop",
        "driver_rollout_job_drains",
        "driver_rollout_job_restarts",
        "driver_rollout_budget_errors",
    } <= set(FilterModule().filters())


def test_a_job_record_as_train_yml_writes_it_is_read_and_checkpointed_only_with_autoresume_and_a_folder():
    (job,) = job_records(listed(record(["a", "b"])))["jobs"]
    assert job == {
        "job": "resnet50",
        "unit": UNIT,
        "hosts": ["a", "b"],
        "checkpointed": True,
        "path": "/etc/hf-loader/job-resnet50.json",
    }
    # train.yml writes what Jinja made of the values: strings too.
    assert job_records(listed({**record(["a"]), "autoresume": "True"}))["jobs"][0]["checkpointed"]
    assert not job_records(listed(record(["a"], autoresume=False)))["jobs"][0]["checkpointed"]
    assert not job_records(listed(record(["a"], save_folder=None)))["jobs"][0]["checkpointed"]


def test_a_record_removed_between_the_listing_and_the_read_is_no_job_and_no_error():
    # path_state lists the folder, then reads each file: a removal in between leaves text null.
    removed = {"path": "/etc/hf-loader/job-gone.json", "size": 300, "mtime": 1767225600.0, "text": None}
    read = FilterModule().filters()["driver_rollout_job_records"]([removed, *listed(record(["a"]))])
    assert [job["job"] for job in read["jobs"]] == ["resnet50"] and read["errors"] == []
    assert job_records([removed]) == {"jobs": [], "errors": []}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{not json", "is not JSON"),
        (json.dumps({**record(["a"]), "unit": "sshd.service"}), "is not hf-train@resnet50.service"),
        (json.dumps({**record(["a"]), "job": "../x"}), "names no valid job"),
        (json.dumps({**record(["a"]), "hosts": "a,b"}), "hosts must be the job's host names"),
        (json.dumps({**record(["a"]), "hosts": []}), "hosts must be the job's host names"),
    ],
)
def test_a_record_that_cannot_be_trusted_skips_the_host_naming_the_file(text, error):
    # A record naming another unit would have the rollout stop (and start) a unit it does not own.
    read = job_records(listed(text))
    assert read["jobs"] == [] and error in read["errors"][0] and "/etc/hf-loader/job-resnet50.json" in read["errors"][0]
    busy = host_plan(PROC_580_82, f"{UNIT} loaded active running x\n", "580", "580.95.05", "drain", "", None, read)
    assert busy["action"] == "skip" and "job records cannot be read" in busy["reason"]
    assert job_drains(["a"], {"a": busy})["a"]["drain_units"] == []


def test_a_plan_lists_only_the_jobs_active_or_left_stopped_on_the_host():
    active = plan(busy=[UNIT], jobs=[record(["a", "b"])])
    assert [(job["job"], job["active"]) for job in active["jobs"]] == [("resnet50", True)]
    left = plan(jobs=[record(["a", "b"])], left=UNIT + "\n")
    assert [(job["job"], job["active"]) for job in left["jobs"]] == [("resnet50", False)]
    assert plan(jobs=[record(["a", "b"])])["jobs"] == []  # an ended job's record alone


def fleet():
    """a, b, c, d: job resnet50 on a and c (checkpointed), b idle, d runs a unit no record names."""
    return {
        "a": plan(busy=[UNIT], jobs=[record(["a", "c"])]),
        "b": plan(),
        "c": plan(busy=[UNIT], jobs=[record(["a", "c"])]),
        "d": plan(busy=["hf-train@solo.service"]),
    }


def test_a_jobs_hosts_are_always_in_the_same_batch_and_the_canary_is_idle():
    plans = fleet()
    done = schedule(["a", "b", "c", "d"], plans, "idle", {}, 1, "")
    assert done["canary"] == ["b"]
    assert done["batches"] == [["a", "c"], ["d"]]  # serial 1: a job of two hosts is a batch of its own
    assert done["rest"] == ["a", "c", "d"] and done["sizes"] == [2, 1]
    assert schedule(["a", "b", "c", "d"], plans, "idle", {}, 3, "")["batches"] == [["a", "c", "d"]]


def test_without_an_idle_host_the_canary_is_the_first_job_and_the_report_says_so():
    plans = {"a": plan(busy=[UNIT], jobs=[record(["a", "b"])]), "b": plan(busy=[UNIT], jobs=[record(["a", "b"])])}
    done = schedule(["a", "b"], plans, "idle", {}, 1, "")
    assert done["canary"] == ["a", "b"] and done["batches"] == []
    assert done["notes"] == ["no idle host to upgrade: the canary is a, b, whose training is drained with it"]


def test_a_named_canary_takes_its_job_mates_and_says_so():
    plans = fleet()
    done = schedule(["a", "b", "c", "d"], plans, "first", {}, 1, "")
    assert done["canary"] == ["a", "c"] and done["notes"] == ["the canary takes c too: they share a job with it"]
    group = schedule(["a", "b", "c", "d"], plans, "gpu_canary", {"gpu_canary": ["d"]}, 1, "")
    assert group["canary"] == ["d"] and group["notes"] == []
    with pytest.raises(ValueError, match="neither 'idle', 'first'"):
        schedule(["a"], {"a": plan()}, "nope", {"gpu_hosts": ["a"]}, 1, "")


def test_the_budget_counts_hosts_already_held_and_skips_what_does_not_fit():
    plans = {"a": plan(cordons=[OPERATOR_HOLD]), "b": plan(), "c": plan(), "d": plan()}
    # 25% of 4 hosts is 1, and a is held already: only a itself (held, so no more down) fits.
    done = schedule(["a", "b", "c", "d"], plans, "", {}, 1, "25%")
    assert done["limit"] == 1 and done["unavailable"] == ["a"]
    assert done["batches"] == [["a"]]
    assert set(done["skipped"]) == {"b", "c", "d"}
    assert "more than upgrade_driver_max_unavailable 25% (1 of 4): raise it" in done["skipped"]["b"]
    # Two allowed: one new host at a time beside the held one (which is down already).
    assert schedule(["a", "b", "c", "d"], plans, "", {}, 2, "2")["batches"] == [["a", "b"], ["c"], ["d"]]
    # No budget: serial alone.
    assert schedule(["a", "b", "c", "d"], plans, "", {}, 2, "")["batches"] == [["a", "b"], ["c", "d"]]


def test_unreachable_hosts_count_against_the_budget_and_a_job_larger_than_it_is_skipped():
    job = record(["a", "b", "c"])
    plans = {host: plan(busy=[UNIT], jobs=[job]) for host in "abc"}
    done = schedule(["a", "b", "c"], plans, "", {}, 3, "2", unreachable=["z"])
    assert done["batches"] == [] and set(done["skipped"]) == {"a", "b", "c"}
    assert "1 host(s) already held or down (z)" in done["skipped"]["a"]
    # Current hosts are not taken out of training: a budget of 1 lets them all through.
    current = {host: plan(loaded=PROC_580_95) for host in "abc"}
    assert schedule(["a", "b", "c"], current, "", {}, "100%", "1")["batches"] == [["a", "b", "c"]]


@pytest.mark.parametrize("value", ["", "2", "25%", "100%", None])
def test_budget_values_accepted(value):
    assert budget_errors(value) == []


@pytest.mark.parametrize("value", ["lots", "-1", "101%", "2.5", "25 %"])
def test_budget_values_refused_naming_the_variable(value):
    assert "upgrade_driver_max_unavailable" in budget_errors(value)[0]


def test_a_batch_stops_when_earlier_batches_spent_the_budget():
    plans = {host: plan() for host in "abc"}
    done = schedule(["a", "b", "c"], plans, "", {}, 1, "1")
    assert budget_stop(["b"], done, {"a": {"state": "upgraded"}}, "1") == ""
    why = budget_stop(["b"], done, {"a": {"state": "failed"}}, "1")
    assert (
        "availability budget is spent: 1 host(s) are held or down (a)" in why
        and "upgrade_driver_max_unavailable 1" in why
    )
    assert budget_stop(["b"], {**done, "limit": None}, {"a": {"state": "failed"}}, "") == ""


def test_drain_stops_a_job_on_all_its_hosts_a_current_mate_included():
    job = record(["a", "b"])
    plans = {"a": plan(busy=[UNIT], jobs=[job]), "b": plan(loaded=PROC_580_95, busy=[UNIT], jobs=[job])}
    assert plans["b"]["action"] == "current"
    decided = job_drains(["a", "b"], plans, "drain", ["a", "b"])
    assert decided["a"]["drain_units"] == decided["b"]["drain_units"] == [UNIT]
    assert decided["a"]["jobs"] == decided["b"]["jobs"] == ["resnet50"]
    # Two current hosts: nothing upgraded, nothing drained.
    both_current = {host: plan(loaded=PROC_580_95, busy=[UNIT], jobs=[job]) for host in "ab"}
    assert job_drains(["a", "b"], both_current)["a"]["drain_units"] == []


def test_a_drain_never_stops_a_job_on_hosts_outside_the_batch():
    # Started after the rollout's plan, the job spans this batch and a host of another batch (c)
    # and one the rollout does not cover (x): draining a and b would kill it on c and x.
    job = record(["a", "b", "c"])
    plans = {"a": plan(busy=[UNIT], jobs=[job]), "b": plan(busy=[UNIT], jobs=[job])}
    decided = job_drains(["a", "b"], plans, "drain", ["a", "b", "c"])
    for host in "ab":
        assert decided[host]["action"] == "skip" and decided[host]["drain_units"] == []
        assert "job resnet50 also runs on c (in another batch, or not answering)" in decided[host]["reason"]
    outside = job_drains(["a"], {"a": plan(busy=[UNIT], jobs=[record(["a", "x"])])}, "drain", ["a"])
    assert "also runs on x (not in this rollout)" in outside["a"]["reason"]
    assert "Add them to upgrade_driver_hosts" in outside["a"]["reason"]


def test_a_drain_never_loses_the_work_of_a_job_without_checkpoints():
    job = record(["a", "b"], autoresume=False)
    plans = {host: plan(busy=[UNIT], jobs=[job]) for host in "ab"}
    decided = job_drains(["a", "b"], plans, "drain", ["a", "b"])
    assert {decided[host]["action"] for host in "ab"} == {"skip"}
    assert "writes no checkpoint it could resume from" in decided["a"]["reason"]
    assert "upgrade_driver_jobs=wait" in decided["a"]["reason"]
    # Waiting for it to end is fine.
    waited = job_drains(["a", "b"], plans, "wait", ["a", "b"])
    assert waited["a"]["action"] == "upgrade" and waited["a"]["wait_units"] == [UNIT]
    assert waited["a"]["drain_units"] == []


def test_a_unit_no_record_names_is_drained_on_its_own_host():
    decided = job_drains(["d", "b"], {"d": plan(busy=["lab-train@x.service"]), "b": plan()}, "drain", ["d", "b"])
    assert decided["d"]["drain_units"] == ["lab-train@x.service"] and decided["b"]["drain_units"] == []


def test_a_job_starts_again_only_when_all_its_hosts_passed():
    job = record(["a", "b"])
    plans = {host: plan(busy=[UNIT], jobs=[job]) for host in "ab"}
    decided = job_drains(["a", "b"], plans, "drain", ["a", "b"])
    both = job_restarts(["a", "b"], plans, decided, {"a": True, "b": True})
    assert both["a"]["restart"] == both["b"]["restart"] == [UNIT] and both["a"]["left_stopped"] == []
    # b failed: starting a alone would leave its ranks waiting for b's forever.
    one = job_restarts(["a", "b"], plans, decided, {"a": True, "b": False})
    for host in "ab":
        assert one[host]["restart"] == [] and one[host]["left_stopped"] == [UNIT]
        assert "job resnet50 stays stopped on all its hosts: b did not pass" in one[host]["why"]
        assert "playbooks/train.yml -e hf_loader_train_job=resnet50" in one[host]["why"]
    held = job_restarts(["a", "b"], plans, decided, {"a": True, "b": True}, {"a": True})
    assert held["b"]["restart"] == [] and "a did not pass or stay held" in held["b"]["why"]


def test_a_job_an_earlier_rollout_left_stopped_starts_when_all_its_hosts_pass_now():
    job = record(["a", "b"])
    plans = {host: plan(jobs=[job], left=UNIT + "\n") for host in "ab"}
    assert _units_together(plans)
    decided = job_drains(["a", "b"], plans, "drain", ["a", "b"])
    assert decided["a"]["drain_units"] == []  # nothing runs to drain
    restarted = job_restarts(["a", "b"], plans, decided, {"a": True, "b": True})
    assert restarted["a"]["restart"] == restarted["b"]["restart"] == [UNIT]
    alone = job_restarts(["a"], {"a": plans["a"]}, {"a": decided["a"]}, {"a": True})
    assert alone["a"]["restart"] == [] and "b not upgraded with it" in alone["a"]["why"]


def _units_together(plans) -> bool:
    return schedule(sorted(plans), plans, "", {}, 1, "")["batches"] == [sorted(plans)]


def test_a_unit_no_record_names_restarts_with_its_own_host():
    plans = {"d": plan(busy=["lab-train@x.service"])}
    decided = job_drains(["d"], plans)
    assert job_restarts(["d"], plans, decided, {"d": True})["d"]["restart"] == ["lab-train@x.service"]
    assert job_restarts(["d"], plans, decided, {"d": False})["d"]["left_stopped"] == ["lab-train@x.service"]


# --- Slurm nodes: the jobs Slurm runs there (gpu-fleet-slurm-health --jobs) ---------------------


def slurm_job(job_id="41", state="RUNNING", requeue=True, name="hf-train-default", user="trainer") -> dict:
    return {"id": job_id, "name": name, "user": user, "state": state, "requeue": requeue, "nodes": "gpu-[01-02]"}


def test_a_node_without_slurm_jobs_is_upgraded_at_once():
    for mode in ("drain", "wait", "skip"):
        assert slurm_jobs([], mode) == {"requeue": [], "wait": [], "skip": ""}


def test_drain_requeues_the_running_jobs_and_waits_for_every_job_to_leave():
    jobs = [slurm_job("41"), slurm_job("42", state="COMPLETING"), slurm_job("43_7", state="SUSPENDED")]
    # A COMPLETING job is already ending: requeued, Slurm would refuse it; it is only waited for.
    assert slurm_jobs(jobs, "drain") == {"requeue": ["41", "43_7"], "wait": ["41", "42", "43_7"], "skip": ""}


def test_a_job_slurm_may_not_requeue_skips_the_node_and_is_never_killed():
    # The attack: a job submitted without --requeue would be killed for good by a requeue or by
    # the reboot; its node must be left alone, with why, and nothing requeued (not even its mates).
    jobs = [slurm_job("41"), slurm_job("57", requeue=False, name="eval", user="ana")]
    decided = slurm_jobs(jobs, "drain")
    assert decided["requeue"] == [] and decided["wait"] == []
    assert "job 57 (eval, ana, RUNNING)" in decided["skip"] and "--requeue" in decided["skip"]
    assert "upgrade_driver_jobs wait" in decided["skip"]


def test_wait_and_skip_modes_touch_no_job():
    jobs = [slurm_job("41"), slurm_job("57", requeue=False)]
    assert slurm_jobs(jobs, "wait") == {"requeue": [], "wait": ["41", "57"], "skip": ""}
    skipped = slurm_jobs(jobs, "skip")
    assert (
        skipped["requeue"] == []
        and skipped["wait"] == []
        and "job 41 (hf-train-default, trainer, RUNNING)" in skipped["skip"]
    )


@pytest.mark.parametrize("jobs", [None, "41", [{"name": "no id"}], ["41"]])
def test_a_job_list_that_is_not_one_is_refused(jobs):
    with pytest.raises(ValueError, match="Slurm jobs must be a list of jobs with an id"):
        slurm_jobs(jobs, "drain")
    with pytest.raises(ValueError, match="upgrade_driver_jobs must be one of"):
        slurm_jobs([], "kill")
