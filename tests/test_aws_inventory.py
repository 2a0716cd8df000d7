"""inventory/aws/aws_ec2.yml selects gpu_hosts by nothing an instance tag can set (issue 27, item 6).

gpu_hosts receive the HF token and the seed key. The attack: tag an instance role=gpu-train (or
any other tag a user with ec2:CreateTags may write) and get it into gpu_hosts. A real
`ansible-inventory` with the aws_ec2 plugin cannot run here: it needs boto3 and AWS. So the
file's own groups and compose expressions run in Ansible's `constructed` plugin (the same
Constructable code the aws_ec2 plugin uses) over hosts shaped as aws_ec2 describes them
(snake_case fields, `tags` as a mapping), and its filter expression is rendered by Ansible's
templar; what the plugin sends to EC2 is otherwise not exercised.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.amazon.aws.plugins.inventory.aws_ec2 import instance_data_filter_to_boto_attr

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / "inventory" / "aws" / "aws_ec2.yml"
BIN = Path(sys.executable).parent
GROUP = "gpu-fleet-train"
VARIABLE = "GPU_FLEET_AUTOSCALING_GROUP"
CONFIG = yaml.safe_load(INVENTORY.read_text())


def instance(tags: dict, devices: dict | None = None) -> dict:
    """Host variables as the aws_ec2 plugin gives them for one instance."""
    return {
        "instance_id": "i-0123456789abcdef0",
        "tags": tags,
        "iam_instance_profile": {"arn": "arn:aws:iam::123456789012:instance-profile/anything"},
        "block_device_mappings": [
            {"device_name": name, "ebs": {"volume_id": volume, "status": "attached"}}
            for name, volume in (devices or {}).items()
        ],
    }


HOSTS = {
    # In the fleet's group; a tag claims another volume, the attachment at /dev/sdf says which.
    "member": instance(
        {"aws:autoscaling:groupName": GROUP, "dataset_volume_id": "vol-0eeeeeeeeeeeeeeee"},
        {"/dev/sda1": "vol-0aaaaaaaaaaaaaaaa", "/dev/sdf": "vol-0bbbbbbbbbbbbbbbb"},
    ),
    "member-without-volume": instance({"aws:autoscaling:groupName": GROUP}, {"/dev/sda1": "vol-0cccccccccccccccc"}),
    # The attacks: tags a user may write.
    "tagged-role": instance({"role": "gpu-train", "Name": "gpu-train"}),
    "tagged-lookalike": instance({"autoscaling:groupName": GROUP, "gpu_hosts": "true", "role": "gpu-train"}),
    "other-group": instance({"aws:autoscaling:groupName": "someone-elses-group", "role": "gpu-train"}),
}


def ansible_inventory(tmp_path: Path, group: str | None) -> dict:
    """ansible-inventory --list over the fake instances with aws_ec2.yml's groups and compose."""
    folder = tmp_path / "inventory"
    folder.mkdir(exist_ok=True)
    (folder / "00-instances.yml").write_text(yaml.safe_dump({"all": {"hosts": HOSTS}}))
    constructed = {"plugin": "constructed", "strict": False}
    constructed |= {key: CONFIG[key] for key in ("groups", "compose", "keyed_groups") if key in CONFIG}
    (folder / "10-aws.config.yml").write_text(yaml.safe_dump(constructed))
    env = {key: value for key, value in os.environ.items() if key != VARIABLE}
    env |= {"ANSIBLE_INVENTORY_ENABLED": "yaml,constructed", "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true"}
    if group is not None:
        env[VARIABLE] = group
    done = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(folder), "--list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_only_members_of_the_autoscaling_group_are_gpu_hosts(tmp_path):
    listing = ansible_inventory(tmp_path, GROUP)
    assert sorted(listing.get("gpu_hosts", {}).get("hosts", [])) == ["member", "member-without-volume"]


def test_the_volume_comes_from_the_attachment_not_from_a_tag(tmp_path):
    hostvars = ansible_inventory(tmp_path, GROUP)["_meta"]["hostvars"]
    assert hostvars["member"]["dataset_volume_source"] == "vol-0bbbbbbbbbbbbbbbb"
    # Nothing at /dev/sdf: no source, and dataset_volume refuses the empty default.
    assert "dataset_volume_source" not in hostvars["member-without-volume"]


@pytest.mark.parametrize("group", [None, ""])
def test_without_the_group_name_no_host_is_selected(tmp_path, group):
    assert not ansible_inventory(tmp_path, group).get("gpu_hosts", {}).get("hosts")


def render(expression: str, group: str | None) -> subprocess.CompletedProcess:
    """Render one of the file's templated values with Ansible's templar, as the plugin does."""
    env = {key: value for key, value in os.environ.items() if key != VARIABLE}
    if group is not None:
        env[VARIABLE] = group
    return subprocess.run(
        [str(BIN / "ansible"), "localhost", "-m", "ansible.builtin.debug", "-a", json.dumps({"msg": expression})],
        capture_output=True,
        text=True,
        env=env | {"ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_NOCOLOR": "1"},
        check=False,
    )


def test_the_filter_names_the_group_and_fails_without_it():
    expression = CONFIG["filters"]["tag:aws:autoscaling:groupName"]
    done = render(expression, GROUP)
    assert done.returncode == 0 and re.search(rf"msg\W+{GROUP}\b", done.stdout), done.stdout + done.stderr
    done = render(expression, None)
    assert done.returncode != 0
    assert f"{VARIABLE} is not set" in done.stdout + done.stderr


def user_settable_tag_keys(text: str) -> list[str]:
    """Tag keys an expression reads (tags.x, tags['x'], tag:x) that are not AWS-reserved."""
    keys = re.findall(r"tags\.(\w+)|tags\[['\"]([^'\"]+)['\"]\]|tag:([^\s:=]+(?::[^\s=]+)?)", text)
    return [key for match in keys for key in match if key and not key.startswith("aws:")]


def test_no_group_filter_or_variable_reads_a_user_settable_tag():
    for key in CONFIG.get("filters", {}):
        assert key.startswith("tag:aws:") or key in instance_data_filter_to_boto_attr, key
        assert not key.startswith("tag:") or key.startswith("tag:aws:"), key
    for section in ("groups", "compose"):
        for name, expression in CONFIG.get(section, {}).items():
            assert user_settable_tag_keys(str(expression)) == [], (section, name, expression)
    assert "keyed_groups" not in CONFIG and "include_filters" not in CONFIG
    assert user_settable_tag_keys(json.dumps(CONFIG.get("hostnames", []))) == []


def test_the_volume_is_read_at_the_device_name_ebs_volumes_attaches_it():
    group_vars = yaml.safe_load((INVENTORY.parent / "group_vars" / "gpu_hosts.yml").read_text())
    assert f"'{group_vars['ebs_volumes_device_name']}'" in CONFIG["compose"]["dataset_volume_source"]
