"""The job records a host keeps (hf_loader_config_dir/job-JOB.json, written by playbooks/train.yml), read
and checked, and the ways the rollout may treat a job (upgrade_driver_jobs)."""

from __future__ import annotations

import json
import re

JOB_MODES = ("wait", "drain", "skip")
JOB_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def job_records(listed) -> dict:
    """The job records of a host (hf_loader_config_dir/job-*.json, as gpu_fleet.common.path_state
    lists them with `listing_contents`: entries with `path` and `text`):
    {'jobs': [{job, unit, hosts, checkpointed, path}], 'errors': [...]}.

    A record names the job's unit (hf-train@JOB.service) and its hosts by node rank; a job is
    checkpointed when autoresume is on and save_folder is set: only then does a drain lose at
    most the batch in flight."""
    jobs, errors = [], []
    for entry in listed or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
            continue  # removed between the listing and the read (text null): no job
        path, text = entry.get("path") or "?", entry["text"]
        try:
            record = json.loads(text)
        except ValueError as error:
            errors.append(f"{path} is not JSON ({error}): remove it or run playbooks/train.yml again")
            continue
        name = record.get("job") if isinstance(record, dict) else None
        hosts = record.get("hosts") if isinstance(record, dict) else None
        if not (isinstance(name, str) and JOB_NAME.match(name)):
            errors.append(f"{path} names no valid job: remove it or run playbooks/train.yml again")
            continue
        if record.get("unit") != f"hf-train@{name}.service":
            errors.append(f"{path}: unit {record.get('unit')!r} is not hf-train@{name}.service: remove it")
            continue
        if not (isinstance(hosts, list) and hosts and all(isinstance(host, str) and host for host in hosts)):
            errors.append(f"{path}: hosts must be the job's host names by node rank: remove it")
            continue
        autoresume = record.get("autoresume") is True or str(record.get("autoresume")).lower() == "true"
        jobs.append(
            {
                "job": name,
                "unit": record["unit"],
                "hosts": hosts,
                "checkpointed": bool(autoresume and record.get("save_folder")),
                "path": path,
            }
        )
    return {"jobs": sorted(jobs, key=lambda job: job["job"]), "errors": errors}
