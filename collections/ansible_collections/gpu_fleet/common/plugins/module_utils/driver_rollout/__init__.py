"""The rolling driver upgrade's decisions (playbooks/upgrade-driver.yml, the upgrade_driver role).

A Composer job runs on several hosts at once (playbooks/train.yml records it on each of them
in hf_loader_config_dir/job-JOB.json). Stopping it on one host stops it on all of them (its
ranks agree to stop at the same batch and checkpoint), and it can only start again on all of
them together. So the rollout treats a job as one unit:

- job_records: the job records read on a host, checked;
- schedule: the canary and the batches within the availability budget, and whether hosts lost
  in earlier batches leave the next one room;
- drains: which units each host of a batch stops or waits for, and which start again after it;
- slurm_jobs: what becomes of the Slurm jobs on a node the rollout holds.

Around them, per host and per batch:

- plan: the target checked, and what the rollout does on each host before anything changes;
- outcome: what a host is after the nvidia_driver role, and whether the rollout goes on;
- report: one row per host and why the rollout stopped, as data and as Markdown;
- phase: the phases (all, or canary then rest) and the gate between them.

plugins/filter/driver_rollout.py, driver_rollout_jobs.py and driver_rollout_phase.py map the
driver_rollout_* filters to these functions. The runbook gathers the inputs on the hosts and
acts; nothing here touches a host.
"""
