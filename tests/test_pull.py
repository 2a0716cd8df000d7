"""Pull mode (roles/fleet_pull): the inventory built from instance data and what tags may set, the
cloud-config, the runner's settings check, and the toolchain lock. The runner's trust boundaries
are attacked for real in tests/test_pull_trust.py; the whole path runs in the pull lab
(scripts/pull_lab.py: `make lab-pull-short` in make test)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "fleet_pull"
# The inventory plugin's source, in the collection; the role installs this file on each host.
PLUGIN = ROOT / "collections/ansible_collections/gpu_fleet/common/plugins/inventory/instance_data.py"
BIN = Path(sys.executable).parent
FIXTURES = Path(__file__).parent / "fixtures" / "instance_data"
# Written by Debian's cloud-init 22.4 in the pull lab (NoCloud seed; meta-data tags in EC2's shape).
NOCLOUD = json.loads((FIXTURES / "nocloud-lab.json").read_text())
# EC2's shape, from cloud-init's documentation of instance-data.json (v1 keys) and its EC2 data
# source with tags in instance metadata (ds.meta_data.tags.instance, cloud-init 22.2+): not
# recorded on EC2 (no cloud is reachable from here).
EC2 = {
    "v1": {
        "cloud_name": "aws",
        "instance_id": "i-0123456789abcdef0",
        "local_hostname": "ip-10-0-1-23",
        "region": "us-east-1",
        "availability_zone": "us-east-1b",
    },
    "ds": {
        "meta_data": {
            "instance-id": "i-0123456789abcdef0",
            "tags": {
                "instance": {
                    "Name": "gpu-train",
                    "gpu-fleet:dataset_volume_source": "vol-0abc1234def567890",
                    "gpu-fleet:groups": "h200, canary",
                }
            },
        }
    },
}


def load_plugin():
    spec = importlib.util.spec_from_file_location("instance_data", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


plugin = load_plugin()
# The role's default allowlist, as instance_data.yml.j2 renders it.
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
ALLOWLIST = DEFAULTS["fleet_pull_tag_allowlist"]
# What a hostile tag tries (issue 27): a command as root, another repository or commit, another
# command line, the hold moved away, the interpreter every module runs with.
HOSTILE = {
    "ansible_become_exe": "/bin/sh -c 'id > /tmp/pwned' ; sudo",
    "ansible_become": "true",
    "ansible_python_interpreter": "/tmp/evil",
    "ansible_connection": "ssh",
    "fleet_pull_repo_url": "https://elsewhere.example/fleet.git",
    "fleet_pull_repo_ref": "f" * 40,
    "fleet_pull_extra_args": "-e @/tmp/theirs.yml",
    "hf_loader_train_hold_file": "/nonexistent/hold",
}


def test_the_lab_host_is_named_by_its_hostname_and_gets_its_listed_tag_as_a_variable():
    lab = {"lab_volume_device": "/dev/loop[0-9]+"}  # what scripts/pull_lab.py lists
    host = plugin.host_from_instance_data(NOCLOUD, {}, "gpu-fleet:", ["gpu_hosts"], tag_allowlist=lab)
    assert host.name == "pull-gpu-01"
    assert host.groups == ["gpu_hosts"]
    assert host.variables["lab_volume_device"] == "/dev/loop0"
    assert host.variables["ansible_connection"] == "local"
    assert host.variables["instance_id"] == NOCLOUD["v1"]["instance_id"]
    # Not listed (the role's default allowlist): refused, never dropped silently.
    with pytest.raises(plugin.TagsRefused, match="'gpu-fleet:lab_volume_device' \\(not in fleet_pull_tag_allowlist\\)"):
        plugin.host_from_instance_data(NOCLOUD, {}, "gpu-fleet:", ["gpu_hosts"], tag_allowlist=ALLOWLIST)


def test_listed_ec2_tags_win_over_the_vars_file_and_fixed_variables_win_over_both():
    file_vars = {"dataset_volume_source": "/dev/nvme1n1", "hf_loader_cache_test_batches": 2, "ansible_become": True}
    host = plugin.host_from_instance_data(
        EC2, file_vars, "gpu-fleet:", ["gpu_hosts"], {"ansible_become": False}, ALLOWLIST, ["h200", "canary"]
    )
    assert host.name == "ip-10-0-1-23"
    assert host.groups == ["gpu_hosts", "h200", "canary"]
    assert host.variables["dataset_volume_source"] == "vol-0abc1234def567890"
    assert host.variables["hf_loader_cache_test_batches"] == 2
    assert host.variables["ansible_become"] is False
    assert "Name" not in host.variables and host.variables["instance_region"] == "us-east-1"
    local = plugin.host_from_instance_data(
        EC2, {"ansible_connection": "ssh"}, "gpu-fleet:", ["gpu_hosts"], {}, ALLOWLIST, ["h200", "canary"]
    )
    assert local.variables["ansible_connection"] == "local"


def test_flat_tags_are_read_too():
    data = {"v1": {"local_hostname": "gpu-7"}, "ds": {"meta_data": {"tags": {"gpu-fleet:rank": "7"}}}}
    host = plugin.host_from_instance_data(data, None, "gpu-fleet:", ["gpu_hosts"], tag_allowlist={"rank": "[0-9]+"})
    assert host.variables["rank"] == "7"


def tagged(tags: dict) -> dict:
    return {"v1": {"local_hostname": "h1"}, "ds": {"meta_data": {"tags": {"instance": tags}}}}


@pytest.mark.parametrize(
    ("data", "file_vars", "says"),
    [
        ({"v1": {}}, {}, "local_hostname"),
        ({"v1": {"local_hostname": "bad host"}}, {}, "local_hostname"),
        (tagged({"gpu-fleet:a-b": "1"}), {}, "'gpu-fleet:a-b' \\(not a variable name\\)"),
        (
            tagged({"gpu-fleet:groups": "x-y"}),
            {},
            "'gpu-fleet:groups'='x-y' \\(a group fleet_pull_tag_groups does not list",
        ),
        (tagged({"gpu-fleet:dataset_volume_source": "/dev/sda"}), {}, "'/dev/sda' \\(does not match"),
        (tagged({"gpu-fleet:dataset_volume_source": "vol-0abc1234def567890\nx"}), {}, "does not match"),
        (tagged({"gpu-fleet:hf_env_offline": "false"}), {}, "not in fleet_pull_tag_allowlist"),
        ({"v1": {"local_hostname": "h1"}}, {"not ok": 1}, "vars file"),
    ],
)
def test_bad_instance_data_is_refused_with_the_fix(data, file_vars, says):
    with pytest.raises(plugin.InstanceDataError, match=says):
        plugin.host_from_instance_data(data, file_vars, "gpu-fleet:", ["gpu_hosts"], tag_allowlist=ALLOWLIST)


# fleet_cache_root and the mount point are where root mounts and chowns; the training account is
# whom training runs as (fleet_training_user: root).
@pytest.mark.parametrize(
    "name",
    [
        *HOSTILE,
        *("playbook_dir", "hf_env_token", "dataset_volume_path", "fleet_cache_root", "dataset_volume_mount_point"),
        *("fleet_training_user", "fleet_training_group", "hf_loader_user", "hf_env_owner", "dataset_volume_mode"),
    ],
)
def test_an_allowlist_that_would_hand_a_tag_control_is_refused(name):
    with pytest.raises(plugin.InstanceDataError, match=f"fleet_pull_tag_allowlist lists '{name}'"):
        plugin.host_from_instance_data(tagged({}), {}, "gpu-fleet:", ["gpu_hosts"], {}, {name: ".*"})


def inventory_of(tmp_path, tags: dict, fail_closed: bool = True, **config) -> subprocess.CompletedProcess:
    """The real plugin through the real ansible-inventory, with a real instance-data.json."""
    data = json.loads(json.dumps(EC2))
    data["ds"]["meta_data"]["tags"]["instance"].update(tags)
    (tmp_path / "instance-data.json").write_text(json.dumps(data))
    (tmp_path / "host_vars.yml").write_text("dataset_volume_source: /dev/nvme1n1\nhf_env_owner: trainer\n")
    path = tmp_path / "instance_data.yml"
    settings = {
        "plugin": "instance_data",
        "instance_data_file": str(tmp_path / "instance-data.json"),
        "vars_file": str(tmp_path / "host_vars.yml"),
        "tag_allowlist": ALLOWLIST,
        "tag_groups": ["h200", "canary"],
        "host_vars": {
            "ansible_python_interpreter": "/usr/bin/python3",
            "hf_loader_train_hold_file": "/var/lib/gpu-fleet/hold",
        },
        **config,
    }
    path.write_text(yaml.safe_dump(settings))
    env = dict(os.environ, ANSIBLE_INVENTORY_PLUGINS=str(PLUGIN.parent))
    if fail_closed:  # as the runner runs it
        env.update(ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="1", ANSIBLE_INVENTORY_UNPARSED_FAILED="1")
    return subprocess.run(
        [BIN / "ansible-inventory", "-i", path, "--list"], capture_output=True, text=True, env=env, check=False
    )


def test_ansible_builds_the_inventory_with_the_plugin(tmp_path):
    done = inventory_of(tmp_path, {})
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    # Every value is marked unsafe: instance data and tags are taken literally, never templated.
    raw = listing["_meta"]["hostvars"]["ip-10-0-1-23"]
    assert raw["dataset_volume_source"] == {"__ansible_unsafe": "vol-0abc1234def567890"}
    hostvars = {
        key: value.get("__ansible_unsafe", value) if isinstance(value, dict) else value for key, value in raw.items()
    }
    assert hostvars["dataset_volume_source"] == "vol-0abc1234def567890" and hostvars["hf_env_owner"] == "trainer"
    assert hostvars["ansible_python_interpreter"] == "/usr/bin/python3"
    assert listing["gpu_hosts"]["hosts"] == ["ip-10-0-1-23"] and listing["canary"]["hosts"] == ["ip-10-0-1-23"]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_tag_is_refused_and_reaches_no_variable(tmp_path, name):
    value = HOSTILE[name]
    done = inventory_of(tmp_path, {f"gpu-fleet:{name}": value})
    # The runner's settings: the inventory fails, so the run fails and the host is held.
    assert done.returncode != 0, done.stdout
    assert f"'gpu-fleet:{name}'" in done.stderr and "instance tags refused" in done.stderr
    assert value not in done.stdout
    # Even where Ansible only warns, the host is left out whole, so no play runs on it.
    lenient = inventory_of(tmp_path, {f"gpu-fleet:{name}": value}, fail_closed=False)
    assert "ip-10-0-1-23" not in lenient.stdout and value not in lenient.stdout


def test_a_missing_instance_data_file_says_what_to_check(tmp_path):
    done = inventory_of(tmp_path, {}, instance_data_file=str(tmp_path / "none.json"))
    assert done.returncode != 0 and "cloud-init status --long" in done.stderr


def test_the_toolchain_lock_pins_what_the_controller_pins():
    def pins(path):
        lines = (ROOT / "requirements" / path).read_text().splitlines()
        # A pin's line carries its --hash options after the pin.
        return dict(line.lower().split()[0].split("==") for line in lines if "==" in line and not line.startswith("#"))

    pull, controller = pins("pull.txt"), pins("controller.txt")
    assert pull["ansible-core"] and pull["ansible"]
    assert {name: controller.get(name) for name in pull} == pull


def render_user_data(tmp_path, *extra):
    out = tmp_path / "user-data.yml"
    done = subprocess.run(
        [BIN / "ansible-playbook", "playbooks/pull-user-data.yml", "-e", f"fleet_pull_user_data_file={out}", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return done, out


def test_the_cloud_config_carries_the_roles_files_and_fits_ec2s_limit(tmp_path):
    ref = "0123456789abcdef0123456789abcdef01234567"
    settings = [
        "-e",
        "fleet_pull_repo_url=https://git.example.internal/gpu-fleet.git",
        "-e",
        f"fleet_pull_repo_ref={ref}",
        "-e",
        '{"fleet_pull_host_vars": {"dataset_volume_source": "/dev/nvme1n1"}}',
    ]
    done, out = render_user_data(tmp_path, *settings)
    assert done.returncode == 0, done.stdout + done.stderr
    text = out.read_text()
    # EC2's limit applies to what is given to it: the gzipped copy, which cloud-init reads as it is.
    packed = Path(f"{out}.gz").read_bytes()
    assert gzip.decompress(packed).decode() == text and len(packed) <= 16384
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    files = {f["path"]: f["content"] for f in document["write_files"]}
    assert {f["permissions"] for f in document["write_files"] if f["path"].startswith("/etc/gpu-fleet/p")} == {
        "0600",
        "0644",
    }
    assert files["/usr/local/sbin/gpu-fleet-pull"] == (ROLE / "files" / "gpu-fleet-pull").read_text()
    assert files["/etc/gpu-fleet/plugins/inventory/instance_data.py"] == PLUGIN.read_text()
    assert files["/etc/gpu-fleet/pull-requirements.txt"] == (ROOT / "requirements" / "pull.txt").read_text()
    assert f"GPU_FLEET_REPO_REF={ref}" in files["/etc/gpu-fleet/pull.env"]
    # What code runs is in pull-settings.yml, which the runner gives as extra variables; the vars
    # file the inventory reads holds the host's data only.
    assert yaml.safe_load(files["/etc/gpu-fleet/pull-settings.yml"])["fleet_pull_repo_ref"] == ref
    assert yaml.safe_load(files["/etc/gpu-fleet/host_vars.yml"]) == {"dataset_volume_source": "/dev/nvme1n1"}
    inventory = yaml.safe_load(files["/etc/gpu-fleet/inventory/instance_data.yml"])
    assert inventory["tag_allowlist"] == ALLOWLIST and inventory["tag_groups"] == []
    assert "OnUnitActiveSec=30min" in files["/etc/systemd/system/gpu-fleet-pull.timer"]
    assert document["runcmd"][-1] == ["systemctl", "start", "--no-block", "gpu-fleet-pull.service"]
    # The same settings render the same bytes: the gzip header carries no time.
    again, _ = render_user_data(tmp_path, *settings)
    assert "changed=0" in again.stdout and Path(f"{out}.gz").read_bytes() == packed


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        (
            '{"fleet_pull_tag_allowlist": {"ansible_become_exe": ".*"}}',
            "fleet_pull_tag_allowlist lists ansible_become_exe",
        ),
        ('{"fleet_pull_tag_allowlist": {"hf_loader_train_hold_file": ".*"}}', "lists hf_loader_train_hold_file"),
        ('{"fleet_pull_tag_allowlist": {"fleet_pull_repo_ref": ".*"}}', "lists fleet_pull_repo_ref"),
        ('{"fleet_pull_tag_allowlist": {"fleet_cache_root": ".*"}}', "lists fleet_cache_root"),
        ('{"fleet_pull_tag_allowlist": {"fleet_training_user": ".*"}}', "lists fleet_training_user"),
        ('{"fleet_pull_host_vars": {"fleet_pull_repo_ref": "x"}}', "fleet_pull_host_vars sets fleet_pull_repo_ref"),
        ('{"fleet_pull_tag_groups": ["a-b"]}', "fleet_pull_tag_groups has entries that are not group names: a-b"),
    ],
)
def test_settings_that_would_hand_tags_control_are_refused_before_anything_is_written(tmp_path, setting, says):
    done, out = render_user_data(
        tmp_path, "-e", "fleet_pull_repo_url=https://g/x.git", "-e", f"fleet_pull_repo_ref={'0' * 40}", "-e", setting
    )
    assert done.returncode != 0 and says in done.stdout, done.stdout
    assert not out.exists()


def test_a_branch_instead_of_a_commit_is_refused_before_anything_is_written(tmp_path):
    done, out = render_user_data(
        tmp_path, "-e", "fleet_pull_repo_url=https://g/x.git", "-e", "fleet_pull_repo_ref=main"
    )
    assert done.returncode != 0 and "fleet_pull_repo_ref 'main' is not a full commit id" in done.stdout
    assert not out.exists()


def run_runner(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess:
    """roles/fleet_pull's runner for real, with valid settings in tmp_path unless `overrides` change them."""
    settings = {
        "GPU_FLEET_REPO_URL": "https://g/x.git",
        "GPU_FLEET_REPO_REF": "0123456789abcdef0123456789abcdef01234567",
        "GPU_FLEET_HOME": str(tmp_path / "home"),
        "GPU_FLEET_VENV": str(tmp_path / "venv"),
        "GPU_FLEET_CONFIG_DIR": str(tmp_path),
        "GPU_FLEET_PLAYBOOK": "playbooks/pull.yml",
        **overrides,
    }
    (tmp_path / "pull.env").write_text("".join(f"{k}='{v}'\n" for k, v in settings.items()))
    return subprocess.run(
        ["bash", ROLE / "files" / "gpu-fleet-pull"],
        env=dict(os.environ, GPU_FLEET_CONFIG=str(tmp_path / "pull.env")),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("setting", "code", "says"),
    [
        ("GPU_FLEET_REPO_REF=main", 2, "not a full commit id"),
        ("GPU_FLEET_REPO_URL=", 2, "sets no GPU_FLEET_REPO_URL"),
        ("GPU_FLEET_FLEET_INVENTORY=inventory/../../etc", 2, "not a folder inside the checkout"),
        ("GPU_FLEET_VERIFY_COMMIT=yes", 2, "is no folder"),
    ],
)
def test_the_runner_refuses_bad_settings_before_it_does_anything(tmp_path, setting, code, says):
    key, value = setting.split("=", 1)
    done = run_runner(tmp_path, **{key: value})
    assert done.returncode == code and says in done.stderr
    assert not (tmp_path / "home").exists()


SLURM_HEALTH_STAND_IN = """#!/bin/sh
# The slurm_node role's gpu-fleet-slurm-health, standing in: its arguments, one call a line.
printf '%s|' "$@" >>"$(dirname "$0")/calls"; echo >>"$(dirname "$0")/calls"
echo '{"action": "drain", "held": true}'
"""


def test_a_failed_run_holds_a_slurm_node_through_slurm_and_a_good_run_releases_it(tmp_path):
    # A run that fails after its hold file: a secrets file others can read (exit 2, before
    # ansible-pull). On a Slurm node the failure must also reach Slurm, or the scheduler keeps
    # sending jobs to a host whose training is held.
    health = tmp_path / "gpu-fleet-slurm-health"
    health.write_text(SLURM_HEALTH_STAND_IN)
    health.chmod(0o755)
    secrets = tmp_path / "secrets.yml"
    secrets.write_text("vault_password: x\n")
    secrets.chmod(0o644)
    (tmp_path / "pull-settings.yml").write_text("---\n")
    (tmp_path / "pull-requirements.txt").write_text("")
    slurm = {"GPU_FLEET_SECRETS_FILE": str(secrets), "GPU_FLEET_SLURM_HEALTH": str(health)}
    done = run_runner(tmp_path, **slurm)
    assert done.returncode == 2, done.stdout + done.stderr
    hold = (tmp_path / "home" / "hold").read_text()
    assert "is readable or owned by others" in hold
    calls = [line.split("|")[:-1] for line in (tmp_path / "calls").read_text().splitlines()]
    assert len(calls) == 1 and calls[0][:4] == ["--hold", "pull", "--reason", calls[0][3]], calls
    assert calls[0][3].startswith("gpu-fleet-pull failed at ") and "is readable or owned by others" in calls[0][3]

    # The secrets fixed, a run that succeeds (ansible-pull standing in: its recap names this host)
    # lifts the runner's own hold, and releases the Slurm node as owner pull: nothing else.
    secrets.chmod(0o600)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    lock = hashlib.sha256((tmp_path / "pull-requirements.txt").read_bytes()).hexdigest()
    (venv / ".gpu-fleet-lock").write_text(lock + "\n")
    pull = venv / "bin" / "ansible-pull"
    pull.write_text(f"#!/bin/sh\nprintf 'PLAY RECAP\\n%s : ok=3 changed=0 failed=0\\n' {socket.gethostname()}\n")
    pull.chmod(0o755)
    done = run_runner(tmp_path, **slurm)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (tmp_path / "home" / "hold").exists()
    assert json.loads((tmp_path / "home" / "ready.json").read_text())["ready"] is True
    calls = [line.split("|")[:-1] for line in (tmp_path / "calls").read_text().splitlines()]
    assert calls[1:] == [["--release", "pull"]], calls

    # No health check installed: no Slurm node, no call, the run as before.
    health.unlink()
    secrets.chmod(0o644)
    done = run_runner(tmp_path, **slurm)
    assert done.returncode == 2 and "Slurm" not in done.stderr
