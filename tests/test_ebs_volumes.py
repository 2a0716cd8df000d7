"""playbooks/ebs-volumes.yml and its role, roles/ebs_volumes, without AWS: the role's checks refuse each
bad value, with a message naming the variable, before any amazon.aws task starts, and let good values
through to the first AWS call.

Nothing here reaches AWS (boto3 is not installed on the controller): each case is a fake host of a
temporary inventory (instance id and Availability Zone as the aws_ec2 inventory plugin gives them)
whose host variables hold the values under test, so one ansible-playbook run checks many cases. The
checks that need AWS's answers (the snapshot, the volume found, the attachment) run in a generated
playbook over a copy of the role made of its own defaults, variables and check tasks, fed the results
the amazon.aws modules return; the arguments given to ec2_vol and the playbook's hand-over to
dataset_volume are rendered the same way.
"""

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = ROOT / "playbooks" / "ebs-volumes.yml"
ROLE = ROOT / "roles" / "ebs_volumes"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
SNAPSHOT = "snap-0123456789abcdef0"


def load(path: Path):
    return yaml.safe_load(path.read_text())


def all_tasks(tasks: list) -> list:
    """The tasks, those inside blocks included."""
    found = []
    for task in tasks:
        found.append(task)
        found.extend(all_tasks(task.get("block", [])))
    return found


VOLUME_PLAY = load(PLAYBOOK)[0]
# The role's tasks in the order its tasks/main.yml imports their files, then the playbook's own
# tasks after the role (the hand-over to dataset_volume).
ROLE_FILES = [step["ansible.builtin.import_tasks"] for step in load(ROLE / "tasks" / "main.yml")]
TASKS = {
    task["name"]: task
    for tasks in [*(load(ROLE / "tasks" / name) for name in ROLE_FILES), VOLUME_PLAY["post_tasks"]]
    for task in all_tasks(tasks)
}
AWS_TASKS = {name for name, task in TASKS.items() if any(key.startswith("amazon.aws.") for key in task)}
# The task Ansible adds before a role with argument specs: it passes on every value these tests give,
# since the role's checks, not Ansible's types, name a bad value and its fix.
VALIDATE = (
    "Validating arguments against arg spec 'main' - "
    + (load(ROLE / "meta" / "argument_specs.yml")["argument_specs"]["main"]["short_description"])
)


def host(number: int, **variables) -> dict:
    """A fake EC2 host as the aws_ec2 inventory plugin describes it, with its own instance id."""
    return {
        "instance_id": f"i-{number:017x}",
        "placement": {"availability_zone": "us-east-1a", "region": "us-east-1"},
        **variables,
    }


def run_playbook(tmp_path: Path, playbook: Path, groups: dict, *args: str) -> tuple[int, dict, str]:
    """ansible-playbook with the project's ansible.cfg and the JSON callback; the site.yml import skipped."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(groups))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_NOCOLOR": "1",
    }
    done = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(playbook), "--skip-tags", "site", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def results(output: dict, play: int = 0) -> dict:
    """{task name: {host: result}} of one play, only the tasks that started; a role's task by its own name.
    Role fleet's, which comes first and checks the fleet-wide values (tests/test_fleet_values.py), left out."""
    tasks = [task for task in output["plays"][play]["tasks"] if not task["task"]["name"].startswith("fleet : ")]
    return {task["task"]["name"].removeprefix("ebs_volumes : "): task["hosts"] for task in tasks}


def role_copy(tmp_path: Path, **task_files: list) -> None:
    """A copy of the role beside a generated playbook: its own defaults and variables (at a role's
    precedence, so that the inventory's values win over the defaults and the role's variables over
    both), its argument specs (the checks' action reads the role's options there; no entry point is
    named like a task file here, so Ansible validates nothing) and the given task files."""
    role = tmp_path / "roles" / "ebs_volumes"
    for folder in ("defaults", "vars", "meta"):
        shutil.copytree(ROLE / folder, role / folder)
    (role / "tasks").mkdir()
    for name, tasks in task_files.items():
        (role / "tasks" / f"{name}.yml").write_text(
            yaml.safe_dump([copy.deepcopy(task) for task in tasks], sort_keys=False)
        )


def role_play(group: str, tasks_from: str) -> dict:
    return {
        "name": group,
        "hosts": group,
        "gather_facts": False,
        "tasks": [{"ansible.builtin.import_role": {"name": "ebs_volumes", "tasks_from": tasks_from}}],
    }


def test_the_playbook_applies_the_role_and_hands_its_volume_to_dataset_volume():
    assert VOLUME_PLAY["roles"] == [{"role": "fleet"}, {"role": "ebs_volumes"}]
    assert [task["name"] for task in VOLUME_PLAY["post_tasks"]] == ["Hand the volume to dataset_volume"]
    assert ROLE_FILES == ["preflight.yml", "attach.yml"]


def test_the_playbook_has_the_aws_tasks_the_tests_watch():
    assert {
        "Read the snapshot",
        "Find the volume an earlier run made for this host",
        "Create and attach the volume, or attach the one found",
        "Tag the instance with its dataset volume id",
    } == AWS_TASKS
    assert next(iter(TASKS)) == "Check the variables"


def test_syntax_check():
    done = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "--syntax-check", str(PLAYBOOK)],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---- variable checks, before any AWS call ----

GOOD_HOSTS = {
    "defaults": host(1),
    "io2": host(2, ebs_volumes_type="io2", ebs_volumes_iops=64000, ebs_volumes_size_gib=100),
    "io1-at-50-per-gib": host(3, ebs_volumes_type="io1", ebs_volumes_iops=5000, ebs_volumes_size_gib=100),
    # -e passes strings: whole numbers as digits are accepted.
    "gp3-strings": host(
        4, ebs_volumes_size_gib="500", ebs_volumes_iops="16000", ebs_volumes_throughput="2000", ebs_volumes_type="gp3"
    ),
    "gp2-encrypted-tagged": host(
        5,
        ebs_volumes_type="gp2",
        ebs_volumes_device_name="/dev/xvdg",
        ebs_volumes_encrypted=True,
        ebs_volumes_kms_key_id="alias/gpu-fleet-data",
        ebs_volumes_delete_on_termination="yes",
        ebs_volumes_tag_instance=False,
        ebs_volumes_name="dataset-gpu-node-05",
        ebs_volumes_tags={"team": "vision", "cost-center": "ml/42"},
    ),
    "kms-arn": host(
        6,
        ebs_volumes_encrypted="true",
        ebs_volumes_kms_key_id="arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    ),
    "short-ids": {
        "instance_id": "i-0123abcd",
        "placement": {"availability_zone": "us-east-1c"},
        "ebs_volumes_region": "us-east-1",
        "ebs_volumes_snapshot_id": "snap-0123abcd",
    },
    "local-zone": {"instance_id": "i-0123abce", "placement": {"availability_zone": "us-west-2-lax-1a"}},
}


@pytest.fixture(scope="module")
def good_runs(tmp_path_factory):
    """The checks alone (--tags ebs_volumes_preflight), then the play as a whole, on good values."""
    groups = {
        "gpu_hosts": {
            "hosts": GOOD_HOSTS,
            "vars": {"ebs_volumes_snapshot_id": SNAPSHOT},
        }
    }
    # The local zone's host names its Region: us-west-2, not the group's.
    groups["gpu_hosts"]["hosts"]["local-zone"]["ebs_volumes_region"] = "us-west-2"
    checks_only = run_playbook(tmp_path_factory.mktemp("checks"), PLAYBOOK, groups, "--tags", "ebs_volumes_preflight")
    whole = run_playbook(tmp_path_factory.mktemp("whole"), PLAYBOOK, groups)
    return checks_only, whole


def test_good_values_pass_the_checks(good_runs):
    (rc, output, stderr), _ = good_runs
    assert rc == 0, json.dumps(output, indent=1) + stderr
    checks = results(output)["Check the variables"]
    assert sorted(checks) == sorted(GOOD_HOSTS)
    assert not any(result.get("failed") for result in checks.values())


@pytest.mark.skipif(importlib.util.find_spec("boto3") is not None, reason="boto3 is installed: the call would go out")
def test_good_values_get_past_the_checks_to_the_first_aws_call(good_runs):
    _, (rc, output, stderr) = good_runs
    started = results(output)
    assert rc != 0
    assert list(started) == [VALIDATE, "Check the variables", "Read the snapshot"], stderr
    assert not any(result.get("failed") for result in started[VALIDATE].values())
    assert not any(result.get("failed") for result in started["Check the variables"].values())
    for name, result in started["Read the snapshot"].items():
        assert result["failed"], name
        assert "boto3" in result["msg"], name


# One fake host per bad value: (host variables, what its message must say).
BAD = {
    "snapshot-unset": ({"ebs_volumes_snapshot_id": ""}, "ebs_volumes_snapshot_id is not set"),
    "snapshot-short": ({"ebs_volumes_snapshot_id": "snap-0123"}, 'ebs_volumes_snapshot_id "snap-0123" is not an EBS'),
    "snapshot-upper": ({"ebs_volumes_snapshot_id": "snap-0123456789ABCDEF0"}, "is not an EBS snapshot id"),
    "snapshot-volume-id": ({"ebs_volumes_snapshot_id": "vol-0123456789abcdef0"}, "is not an EBS snapshot id"),
    "type-hdd": ({"ebs_volumes_type": "st1"}, 'ebs_volumes_type "st1" is not offered: choose gp3'),
    "type-unknown": ({"ebs_volumes_type": "gp4"}, 'ebs_volumes_type "gp4" is not offered'),
    "size-fraction": ({"ebs_volumes_size_gib": "1.5"}, 'ebs_volumes_size_gib "1.5" is not a whole number of GiB'),
    "size-words": ({"ebs_volumes_size_gib": "big"}, 'ebs_volumes_size_gib "big" is not a whole number'),
    "size-negative": ({"ebs_volumes_size_gib": -5}, "ebs_volumes_size_gib -5 is not a whole number"),
    "size-gp3-too-big": (
        {"ebs_volumes_size_gib": 70000},
        "ebs_volumes_size_gib 70000 is outside what AWS allows for gp3",
    ),
    "size-io2-too-small": (
        {"ebs_volumes_type": "io2", "ebs_volumes_iops": 1000, "ebs_volumes_size_gib": 2},
        "ebs_volumes_size_gib 2 is outside what AWS allows for io2: 4 to 65536 GiB",
    ),
    "iops-words": ({"ebs_volumes_iops": "fast"}, 'ebs_volumes_iops "fast" is not a whole number'),
    "iops-gp3-low": (
        {"ebs_volumes_iops": 1000},
        "ebs_volumes_iops 1000 is outside what AWS allows for gp3: 3000 to 80000",
    ),
    "iops-gp3-high": ({"ebs_volumes_iops": 90000}, "ebs_volumes_iops 90000 is outside what AWS allows for gp3"),
    "iops-io1-high": (
        {"ebs_volumes_type": "io1", "ebs_volumes_iops": 70000},
        "outside what AWS allows for io1: 100 to 64000",
    ),
    "iops-io2-missing": ({"ebs_volumes_type": "io2"}, "ebs_volumes_iops must be set for io2: 100 to 256000 IOPS"),
    "iops-gp2": ({"ebs_volumes_type": "gp2", "ebs_volumes_iops": 3000}, "ebs_volumes_iops cannot be set for gp2"),
    "iops-per-gib": (
        {"ebs_volumes_size_gib": 10, "ebs_volumes_iops": 6000},
        "ebs_volumes_iops 6000 is more than gp3 allows on 10 GiB: at most 500 IOPS per GiB, 5000 here",
    ),
    "throughput-words": ({"ebs_volumes_throughput": "max"}, 'ebs_volumes_throughput "max" is not a whole number'),
    "throughput-low": (
        {"ebs_volumes_throughput": 100},
        "ebs_volumes_throughput 100 is outside what AWS allows for gp3: 125",
    ),
    "throughput-high": (
        {"ebs_volumes_throughput": 2500, "ebs_volumes_iops": 12000},
        "ebs_volumes_throughput 2500 is outside what AWS allows for gp3: 125 to 2000 MiB/s",
    ),
    "throughput-io2": (
        {"ebs_volumes_type": "io2", "ebs_volumes_iops": 1000, "ebs_volumes_throughput": 500},
        "ebs_volumes_throughput can be set for gp3 only, not io2",
    ),
    "throughput-per-iops": (
        {"ebs_volumes_throughput": 1000},
        "ebs_volumes_throughput 1000 MiB/s needs more IOPS: gp3 allows 0.25 MiB/s per IOPS, so at least 4000 IOPS",
    ),
    "device-root": ({"ebs_volumes_device_name": "/dev/sda1"}, 'ebs_volumes_device_name "/dev/sda1" is not a device'),
    "device-past-p": ({"ebs_volumes_device_name": "/dev/sdq"}, 'ebs_volumes_device_name "/dev/sdq"'),
    "device-nvme": ({"ebs_volumes_device_name": "/dev/nvme1n1"}, "use /dev/sdf to /dev/sdp"),
    "name-quote": ({"ebs_volumes_name": "data'set"}, 'ebs_volumes_name "data\'set" is not a valid Name tag'),
    "name-long": ({"ebs_volumes_name": "x" * 257}, "is not a valid Name tag: 1 to 256"),
    "tags-not-mapping": ({"ebs_volumes_tags": "team=vision"}, "ebs_volumes_tags must be a mapping"),
    "tags-reserved": ({"ebs_volumes_tags": {"aws:team": "vision"}}, "wrong: aws:team"),
    "tags-managed": ({"ebs_volumes_tags": {"Name": "mine"}}, "wrong: Name"),
    "tags-long-value": ({"ebs_volumes_tags": {"team": "v" * 257}}, "wrong: team"),
    "bool-encrypted": ({"ebs_volumes_encrypted": "maybe"}, 'ebs_volumes_encrypted must be true or false; got "maybe"'),
    "bool-delete": (
        {"ebs_volumes_delete_on_termination": "sometimes"},
        "ebs_volumes_delete_on_termination must be true or false",
    ),
    "kms-unencrypted": ({"ebs_volumes_kms_key_id": "alias/data"}, "needs ebs_volumes_encrypted: true"),
    "kms-garbage": (
        {"ebs_volumes_kms_key_id": "my key", "ebs_volumes_encrypted": True},
        'ebs_volumes_kms_key_id "my key" needs ebs_volumes_encrypted: true and must name a KMS key',
    ),
    "region-bad": ({"ebs_volumes_region": "us-east"}, 'ebs_volumes_region "us-east" is not an AWS Region'),
    "region-other-than-zone": (
        {"ebs_volumes_region": "eu-west-1"},
        'placement.availability_zone "us-east-1a", not an Availability Zone of "eu-west-1"',
    ),
    "unknown-variable": ({"ebs_volumes_snapshot": SNAPSHOT}, "Unknown variable(s) ebs_volumes_snapshot:"),
}
# Hosts whose inventory entry is wrong: (the whole entry, what its message must say).
BAD_HOSTS = {
    "no-instance-id": ({"placement": {"availability_zone": "us-east-1a", "region": "us-east-1"}}, "has no instance_id"),
    "bad-instance-id": (
        {"instance_id": "i-xyz", "placement": {"availability_zone": "us-east-1a", "region": "us-east-1"}},
        'has instance_id "i-xyz", not an EC2 instance id',
    ),
    "no-zone": (
        {"instance_id": "i-00000000000000fa1", "ebs_volumes_region": "us-east-1"},
        "has no placement.availability_zone",
    ),
    "no-region": (
        {"instance_id": "i-00000000000000fa2", "placement": {"availability_zone": "us-east-1a"}},
        "ebs_volumes_region is not set and no-region has no placement.region",
    ),
    # The aws_ec2 plugin's placement.region is the zone less its last letter: wrong for a Local Zone.
    "local-zone-region": (
        {
            "instance_id": "i-00000000000000fa4",
            "placement": {"availability_zone": "us-west-2-lax-1a", "region": "us-west-2-lax-1"},
        },
        'ebs_volumes_region "us-west-2-lax-1" (the host\'s placement.region) is not an AWS Region',
    ),
    "same-instance-1": (host(0xFA3), "same-instance-1's instance_id i-00000000000000fa3 is also another host's"),
    "same-instance-2": (host(0xFA3), "same-instance-2's instance_id i-00000000000000fa3 is also another host's"),
}


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    hosts = {name: host(100 + n, **variables) for n, (name, (variables, _)) in enumerate(BAD.items())}
    hosts.update({name: entry for name, (entry, _) in BAD_HOSTS.items()})
    groups = {"gpu_hosts": {"hosts": hosts, "vars": {"ebs_volumes_snapshot_id": SNAPSHOT}}}
    rc, output, stderr = run_playbook(tmp_path_factory.mktemp("bad"), PLAYBOOK, groups)
    assert rc != 0
    return results(output), stderr


def test_bad_values_stop_every_host_before_any_aws_task(bad_run):
    started, stderr = bad_run
    assert list(started) == [VALIDATE, "Check the variables"], stderr
    assert not set(started) & AWS_TASKS
    assert not any(result.get("failed") for result in started[VALIDATE].values())
    assert sorted(started["Check the variables"]) == sorted([*BAD, *BAD_HOSTS])
    assert all(result["failed"] for result in started["Check the variables"].values())


@pytest.mark.parametrize(("name", "expected"), [(name, case[1]) for name, case in {**BAD, **BAD_HOSTS}.items()])
def test_each_bad_value_fails_with_its_message(bad_run, name, expected):
    started, _ = bad_run
    result = started["Check the variables"][name]
    assert result["failed"] is True
    assert expected in result["msg"], result["msg"]


def test_extra_vars_are_checked_too(tmp_path):
    groups = {"gpu_hosts": {"hosts": {"gpu-a": host(1), "gpu-b": host(2)}}}
    rc, output, _ = run_playbook(
        tmp_path, PLAYBOOK, groups, "-e", f"ebs_volumes_snapshot_id={SNAPSHOT}", "-e", "ebs_volumes_size_gib=12.5"
    )
    started = results(output)
    assert rc != 0
    assert list(started) == [VALIDATE, "Check the variables"]
    for result in started["Check the variables"].values():
        assert result["msg"].startswith('ebs_volumes_size_gib "12.5" is not a whole number of GiB'), result["msg"]


# ---- the checks on AWS's answers, the arguments of ec2_vol, the hand-over ----

VOLUME = "vol-0123456789abcdef0"
CREATED = "vol-0fedcba9876543210"


def snapshot_info(state="completed", size=200, progress="100%"):
    """What amazon.aws.ec2_snapshot_info registers (snake_cased DescribeSnapshots)."""
    return {"snapshots": [{"snapshot_id": SNAPSHOT, "state": state, "progress": progress, "volume_size": size}]}


def volume(volume_id=VOLUME, snapshot=SNAPSHOT, instance=None):
    """One volume as amazon.aws.ec2_vol_info and ec2_vol return it."""
    attachments = [{"instance_id": instance, "device": "/dev/sdf", "status": "attached"}] if instance else []
    return {"id": volume_id, "snapshot_id": snapshot, "zone": "us-east-1a", "attachment_set": attachments}


SNAPSHOT_CASES = {
    "snapshot-ok": ({"__ebs_volumes_snapshot_info": snapshot_info()}, None),
    "snapshot-ok-bigger": ({"__ebs_volumes_snapshot_info": snapshot_info(), "ebs_volumes_size_gib": 300}, None),
    "snapshot-pending": (
        {"__ebs_volumes_snapshot_info": snapshot_info(state="pending", progress="42%")},
        f"Snapshot {SNAPSHOT} is pending (42%): only a completed snapshot",
    ),
    "snapshot-error": ({"__ebs_volumes_snapshot_info": snapshot_info(state="error")}, f"Snapshot {SNAPSHOT} is error"),
    "size-below-snapshot": (
        {"__ebs_volumes_snapshot_info": snapshot_info(size=200), "ebs_volumes_size_gib": 100},
        f"ebs_volumes_size_gib 100 is smaller than snapshot {SNAPSHOT} (200 GiB)",
    ),
    "io2-small-snapshot": (
        {"__ebs_volumes_snapshot_info": snapshot_info(size=2), "ebs_volumes_type": "io2", "ebs_volumes_iops": 100},
        "A io2 volume of 2 GiB (the snapshot's size) is outside what AWS allows: 4 to 65536 GiB",
    ),
    "iops-per-gib-of-snapshot": (
        {"__ebs_volumes_snapshot_info": snapshot_info(size=10), "ebs_volumes_iops": 10000},
        "ebs_volumes_iops 10000 is more than gp3 allows on 10 GiB: at most 500 IOPS per GiB, 5000 here",
    ),
}
FOUND_CASES = {
    "found-none": ({"__ebs_volumes_found": {"volumes": []}}, None),
    "found-ours": ({"__ebs_volumes_found": {"volumes": [volume()]}}, None),
    "found-two": (
        {"__ebs_volumes_found": {"volumes": [volume(), volume("vol-0123456789abcdef1")]}},
        f"Several volumes are tagged gpu-fleet:instance-id=i-{0x300 + 2:017x}: {VOLUME}, vol-0123456789abcdef1",
    ),
    "found-other-snapshot": (
        {"__ebs_volumes_found": {"volumes": [volume(snapshot="snap-0fedcba9876543210")]}},
        f"was created from snap-0fedcba9876543210, not {SNAPSHOT}",
    ),
}
ATTACH_CASES = {
    "attached": ({"__ebs_volumes_attach": {"volume_id": VOLUME, "volume": volume(instance=f"i-{0x400:017x}")}}, None),
    # ec2_vol's answer when another volume sits at the device name: no volume, nothing created.
    "device-taken": (
        {"__ebs_volumes_attach": {"volume_id": "vol-0aaaaaaaaaaaaaaaa", "found_volume": None, "device": "/dev/sdf"}},
        "Device /dev/sdf on device-taken (i-00000000000000401) already holds volume vol-0aaaaaaaaaaaaaaaa",
    ),
    "attached-elsewhere": (
        {"__ebs_volumes_attach": {"volume_id": VOLUME, "volume": volume(instance="i-0fffffffffffffff0")}},
        f"Volume {VOLUME} is not attached to i-00000000000000402",
    ),
}


def numbered(cases: dict, first: int) -> dict:
    return {name: host(first + n, **variables) for n, (name, (variables, _)) in enumerate(cases.items())}


@pytest.fixture(scope="module")
def aws_answer_run(tmp_path_factory):
    """The role's own checks on AWS's answers, its ec2_vol arguments, its record of the volume and the
    playbook's hand-over, fed fake answers."""
    tmp_path = tmp_path_factory.mktemp("answers")
    ec2_vol = TASKS["Create and attach the volume, or attach the one found"]
    render = {
        "name": "Render the ec2_vol arguments",
        "ansible.builtin.set_fact": {"rendered": ec2_vol["amazon.aws.ec2_vol"]},
    }
    role_copy(
        tmp_path,
        snapshot_cases=[TASKS["Check the volume against the snapshot"]],
        found_cases=[TASKS["Check the volume found"]],
        attach_cases=[TASKS["Check that the volume is attached to the host's instance"]],
        render_cases=[
            render,
            TASKS["Record the host's volume"],
            TASKS["Hand the volume to dataset_volume"],
            TASKS["Say which volume the host got"],
        ],
    )
    playbook = tmp_path / "answers.yml"
    groups_played = ["snapshot_cases", "found_cases", "attach_cases", "render_cases"]
    playbook.write_text(yaml.safe_dump([role_play(group, group) for group in groups_played], sort_keys=False))
    groups = {
        "snapshot_cases": {"hosts": numbered(SNAPSHOT_CASES, 0x200)},
        "found_cases": {"hosts": numbered(FOUND_CASES, 0x300)},
        "attach_cases": {"hosts": numbered(ATTACH_CASES, 0x400)},
        "render_cases": {
            "hosts": {
                "first-run": host(0x500, __ebs_volumes_found={"volumes": []}),
                "created": host(
                    0x502,
                    __ebs_volumes_found={"volumes": []},
                    __ebs_volumes_attach={"volume_id": CREATED, "volume": volume(CREATED, instance=f"i-{0x502:017x}")},
                ),
                "rerun": host(
                    0x501,
                    __ebs_volumes_found={"volumes": [volume()]},
                    __ebs_volumes_attach={"volume_id": VOLUME, "volume": volume(instance=f"i-{0x501:017x}")},
                    ebs_volumes_size_gib="500",
                    ebs_volumes_iops="6000",
                    ebs_volumes_throughput="250",
                    ebs_volumes_encrypted="yes",
                    ebs_volumes_kms_key_id="alias/data",
                    ebs_volumes_tags={"team": "vision"},
                ),
            }
        },
        "all": {"vars": {"ebs_volumes_snapshot_id": SNAPSHOT}},
    }
    rc, output, stderr = run_playbook(tmp_path, playbook, groups)
    assert rc != 0, "some cases must fail"
    return {play["play"]["name"]: results(output, n) for n, play in enumerate(output["plays"])}, stderr


@pytest.mark.parametrize(
    ("group", "task", "name", "expected"),
    [
        *[("snapshot_cases", "Check the volume against the snapshot", n, c[1]) for n, c in SNAPSHOT_CASES.items()],
        *[("found_cases", "Check the volume found", n, c[1]) for n, c in FOUND_CASES.items()],
        *[
            ("attach_cases", "Check that the volume is attached to the host's instance", n, c[1])
            for n, c in ATTACH_CASES.items()
        ],
    ],
)
def test_the_checks_on_aws_answers(aws_answer_run, group, task, name, expected):
    plays, stderr = aws_answer_run
    result = plays[group][task][name]
    if expected is None:
        assert not result.get("failed"), result.get("msg", "") + stderr
    else:
        assert result["failed"] is True
        assert expected in result["msg"], result["msg"]


def test_a_first_run_creates_from_the_snapshot_with_the_defaults(aws_answer_run):
    plays, _ = aws_answer_run
    rendered = plays["render_cases"]["Render the ec2_vol arguments"]["first-run"]["ansible_facts"]["rendered"]
    instance = f"i-{0x500:017x}"
    assert rendered == {
        "region": "us-east-1",
        "instance": instance,
        "zone": "us-east-1a",
        "snapshot": SNAPSHOT,
        "volume_type": "gp3",
        "encrypted": False,
        "device_name": "/dev/sdf",
        "delete_on_termination": False,
        "tags": {
            "Name": "gpu-fleet-dataset-first-run",
            "gpu-fleet:instance-id": instance,
            "gpu-fleet:host": "first-run",
        },
        "purge_tags": False,
        "modify_volume": False,
    }
    handed = plays["render_cases"]["Hand the volume to dataset_volume"]["first-run"]
    assert handed.get("skipped") is True  # no volume id before ec2_vol returns one


def test_a_rerun_attaches_the_volume_found_and_hands_its_id_to_dataset_volume(aws_answer_run):
    plays, _ = aws_answer_run
    rendered = plays["render_cases"]["Render the ec2_vol arguments"]["rerun"]["ansible_facts"]["rendered"]
    assert rendered["id"] == VOLUME
    assert (rendered["volume_size"], rendered["iops"], rendered["throughput"]) == (500, 6000, 250)
    assert (rendered["encrypted"], rendered["kms_key_id"]) == (True, "alias/data")
    assert rendered["tags"]["team"] == "vision"
    assert rendered["tags"]["gpu-fleet:instance-id"] == f"i-{0x501:017x}"
    facts = plays["render_cases"]["Hand the volume to dataset_volume"]["rerun"]["ansible_facts"]
    assert facts == {
        "dataset_volume_source": VOLUME,
        "dataset_volume_type": "block",
        "dataset_volume_format": False,
        "dataset_volume_format_confirm_device": "",
    }


def test_a_new_volume_is_handed_to_dataset_volume(aws_answer_run):
    plays, _ = aws_answer_run
    facts = plays["render_cases"]["Hand the volume to dataset_volume"]["created"]["ansible_facts"]
    assert facts["dataset_volume_source"] == CREATED
    assert facts["dataset_volume_format"] is False


def test_a_taken_device_name_fails_in_check_mode_too(tmp_path):
    """In check mode ec2_vol answers the same when another volume sits at the device name."""
    answer = {"volume_id": "vol-0aaaaaaaaaaaaaaaa", "found_volume": None, "device": "/dev/sdf", "changed": False}
    role_copy(tmp_path, attach=[TASKS["Check that the volume is attached to the host's instance"]])
    playbook = tmp_path / "check.yml"
    playbook.write_text(yaml.safe_dump([role_play("gpu_hosts", "attach")]))
    groups = {"gpu_hosts": {"hosts": {"busy": host(0x600, __ebs_volumes_attach=answer)}}}
    rc, output, _ = run_playbook(tmp_path, playbook, groups, "--check")
    result = results(output)["Check that the volume is attached to the host's instance"]["busy"]
    assert rc != 0
    assert "Device /dev/sdf on busy (i-00000000000000600) already holds volume vol-0aaaaaaaaaaaaaaaa" in result["msg"]


def test_the_play_says_what_each_host_got(aws_answer_run):
    plays, _ = aws_answer_run
    said = {name: result["msg"] for name, result in plays["render_cases"]["Say which volume the host got"].items()}
    assert said["first-run"].endswith(f"would create a gp3 volume from {SNAPSHOT}")
    assert said["created"].endswith(f"{CREATED} created from {SNAPSHOT}, attached as /dev/sdf")
    assert said["rerun"].endswith(f"{VOLUME} found, attached as /dev/sdf")


def test_the_role_records_each_hosts_volume_and_state_for_the_summary(aws_answer_run):
    plays, _ = aws_answer_run
    recorded = {
        name: result["ansible_facts"] for name, result in plays["render_cases"]["Record the host's volume"].items()
    }
    assert recorded == {
        "first-run": {"ebs_volumes_volume_id": "", "ebs_volumes_state": "would-create"},
        "created": {"ebs_volumes_volume_id": CREATED, "ebs_volumes_state": "created"},
        "rerun": {"ebs_volumes_volume_id": VOLUME, "ebs_volumes_state": "found"},
    }
