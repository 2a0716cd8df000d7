"""Pull mode's trust boundaries, attacked for real (issue 27: items 1, 2 and 7, pull's side of 3).

The runner (roles/fleet_pull/files/gpu-fleet-pull, bash) runs with the files the role renders
(the cloud-config of playbooks/pull-user-data.yml, written under a temporary root), the real
ansible-pull of the controller's toolchain, the real instance_data plugin, a real git repository
and real pip. Each attack is performed; the test fails if it works: a hostile tag reaches a
variable or runs a command, a broken inventory or a run that matched no host says ready, a killed
run lifts the hold, a tampered wheel is installed, an unsigned commit runs when signatures are
required, a secret is read from a file others can read.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "fleet_pull"
BIN = Path(sys.executable).parent
RUNNER = ROLE / "files" / "gpu-fleet-pull"
HOSTNAME = socket.gethostname()
PREFIX = "gpu-fleet:"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("git", "rsync", "flock")), reason="the runner needs git, rsync and flock"
)

# The repository the hosts pull: a probe of what the play sees, and a task that becomes root as
# the site's plays do (a become_exe tag would run there).
PROBE_PLAYBOOK = """\
- name: Probe
  hosts: gpu_hosts
  gather_facts: false
  tasks:
    - name: Record the variables the play sees
      ansible.builtin.copy:
        content: "{{ {'dataset_volume_source': dataset_volume_source | default(''),
                      'fleet_pull_repo_url': fleet_pull_repo_url | default(''),
                      'hf_env_token': hf_env_token | default(''),
                      'fleet_group': fleet_group | default('')} | to_json }}"
        dest: "{{ probe_dir }}/vars.json"
        mode: "0600"
    - name: Become root, as the site's plays do
      ansible.builtin.command: "true"
      become: true
      changed_when: false
    - name: Take a while when asked (a run to stop)
      ansible.builtin.shell: "touch {{ probe_dir }}/sleeping && sleep {{ probe_sleep }}"
      when: probe_sleep | default(0) | int > 0
      changed_when: false
"""

# Every attack of issue 27, item 1: each would run a command as root, pull another repository,
# take another command line or move the hold, if a tag could set it.
HOSTILE_TAGS = {
    "ansible_become_exe": "{evil}",
    "ansible_become": "true",
    "ansible_python_interpreter": "{evil}",
    "fleet_pull_repo_url": "file:///elsewhere.git",
    "fleet_pull_repo_ref": "0" * 40,
    "fleet_pull_extra_args": "-e @/tmp/theirs.yml",
    "hf_loader_train_hold_file": "/nonexistent/hold",
}


def git(*args, cwd, env=None):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def make_repository(path: Path, sign_env: dict | None = None) -> str:
    """A repository with the probe playbook and a fleet inventory's group_vars; its commit id."""
    path.mkdir(parents=True)
    (path / "pull.yml").write_text(PROBE_PLAYBOOK)
    (path / "inventory" / "fleet" / "group_vars").mkdir(parents=True)
    (path / "inventory" / "fleet" / "group_vars" / "gpu_hosts.yml").write_text("fleet_group: from the checkout\n")
    git("init", "--quiet", "-b", "main", cwd=path)
    git("add", "-A", cwd=path)
    identity = ["-c", "user.name=fleet", "-c", "user.email=fleet@example.invalid"]
    if sign_env:
        git(*identity, "-c", f"user.signingkey={sign_env['KEY']}", "commit", "-q", "-S", "-m", "signed", cwd=path,
            env=sign_env)  # fmt: skip
    else:
        git(*identity, "commit", "-q", "-m", "probe", cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("origin") / "repo"
    return path, make_repository(path)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, repository) -> dict[str, str]:
    """The files the cloud-config writes, rendered by the role for a root under BASE (replaced per test)."""
    base = "/BASE"
    out = tmp_path_factory.mktemp("user-data") / "user-data.yml"
    settings = {
        "fleet_pull_repo_url": str(repository[0]),
        "fleet_pull_repo_ref": repository[1],
        "fleet_pull_playbook": "pull.yml",
        "fleet_pull_fleet_inventory": "inventory/fleet",
        "fleet_pull_config_dir": f"{base}/etc",
        "fleet_pull_home": f"{base}/home",
        "fleet_pull_venv": f"{base}/venv",
        "fleet_pull_instance_data_file": f"{base}/instance-data.json",
        "fleet_pull_secrets_file": f"{base}/etc/secrets.yml",
        "fleet_pull_gnupg_home": f"{base}/gnupg",
        "fleet_pull_python": sys.executable,
        "fleet_pull_tag_groups": ["canary"],
        "fleet_pull_host_vars": {"probe_dir": f"{base}/probe"},
        "fleet_pull_user_data_file": str(out),
    }
    done = subprocess.run(
        [BIN / "ansible-playbook", "playbooks/pull-user-data.yml", "-e", json.dumps(settings)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document = yaml.safe_load(gzip.decompress(Path(f"{out}.gz").read_bytes()).decode())
    return {f["path"]: f["content"] for f in document["write_files"] if f["path"].startswith(base)}


class Host:
    """A pull host's files under a temporary root: the role's rendered files, instance data, a toolchain."""

    def __init__(self, root: Path, rendered: dict[str, str]):
        self.root = root
        for path, content in rendered.items():
            dest = Path(path.replace("/BASE", str(root)))
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(content.replace("/BASE", str(root)))
        self.config = root / "etc"
        self.home = root / "home"
        self.probe = root / "probe"
        self.probe.mkdir()
        self.evil_marker = root / "PWNED"
        # The controller's toolchain stands in for the host's venv, marked as installed from this lock.
        venv = root / "venv"
        venv.mkdir()
        (venv / "bin").symlink_to(BIN)
        lock = (self.config / "pull-requirements.txt").read_bytes()
        (venv / ".gpu-fleet-lock").write_text(hashlib.sha256(lock).hexdigest() + "\n")
        self.write_instance_data({})

    def write_instance_data(self, tags: dict, hostname: str = HOSTNAME) -> None:
        data = {
            "v1": {"local_hostname": hostname, "instance_id": "i-0123456789abcdef0", "cloud_name": "aws"},
            "ds": {"meta_data": {"tags": {"instance": {"Name": "gpu-train", **tags}}}},
        }
        (self.root / "instance-data.json").write_text(json.dumps(data))

    def settings(self, **overrides: str) -> None:
        """Settings as a later line of pull.env (sourced: the last assignment wins)."""
        with open(self.config / "pull.env", "a") as env:
            env.writelines(f"{key}={value}\n" for key, value in overrides.items())

    def evil_program(self) -> Path:
        """What a hostile tag points Ansible at: it leaves a mark, then does what it stands in for."""
        program = self.root / "evil"
        program.write_text(f'#!/bin/sh\ntouch {self.evil_marker}\nexec "$@"\n')
        program.chmod(0o755)
        return program

    def run(self, *args: str, wait: bool = True, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
        env = dict(os.environ, GPU_FLEET_CONFIG=str(self.config / "pull.env"), HOME=str(self.root))
        command = ["bash", str(RUNNER), *args]
        if not wait:
            return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)
        return subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=300)

    @property
    def ready(self) -> dict:
        return json.loads((self.home / "ready.json").read_text())

    @property
    def hold(self) -> str | None:
        hold = self.home / "hold"
        return hold.read_text() if hold.exists() else None

    @property
    def seen(self) -> dict | None:
        seen = self.probe / "vars.json"
        return json.loads(seen.read_text()) if seen.exists() else None


@pytest.fixture
def host(tmp_path, rendered) -> Host:
    return Host(tmp_path, rendered)


def show(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


# --- a good run, the baseline every attack is measured against ------------------------------------


def test_a_good_run_is_ready_sees_allowed_tags_and_secrets_and_keeps_its_files_to_root(host, repository):
    host.write_instance_data({f"{PREFIX}dataset_volume_source": "vol-0123456789abcdef0", f"{PREFIX}groups": "canary"})
    # Item 7: secrets come from a root-only file put there from the cloud's secret store.
    secrets = host.config / "secrets.yml"
    secrets.write_text("hf_env_token: hf_from_the_secret_store\n")
    secrets.chmod(0o600)
    done = host.run()
    assert done.returncode == 0, show(done)
    assert host.ready["ready"] is True and host.ready["running"] is False and host.hold is None
    assert host.seen["dataset_volume_source"] == "vol-0123456789abcdef0"
    assert host.seen["fleet_group"] == "from the checkout", "the fleet inventory's group_vars reach the play"
    assert host.seen["fleet_pull_repo_url"] == str(repository[0]), "pull mode's settings come from pull-settings.yml"
    # Item 7: the checkout and the logs are not world-readable; others may only pass the home.
    modes = {name: stat.S_IMODE((host.home / name).stat().st_mode) for name in ("checkout", "logs", "reports")}
    assert modes == {"checkout": 0o700, "logs": 0o700, "reports": 0o700}
    assert stat.S_IMODE(host.home.stat().st_mode) == 0o711
    assert all(stat.S_IMODE(log.stat().st_mode) & 0o077 == 0 for log in (host.home / "logs").iterdir())
    assert host.seen["hf_env_token"] == "hf_from_the_secret_store"
    assert "hf_from_the_secret_store" not in "".join(log.read_text() for log in (host.home / "logs").iterdir())


# --- item 1: a tag gives root ---------------------------------------------------------------------


def test_hostile_tags_are_refused_and_hold_the_host_until_a_good_run(host, repository):
    evil = host.evil_program()
    host.write_instance_data({f"{PREFIX}{name}": value.format(evil=evil) for name, value in HOSTILE_TAGS.items()})
    done = host.run()
    assert done.returncode == 4, show(done)
    assert not host.evil_marker.exists(), "a tag ran a command"
    assert host.seen is None, "a play ran on a host whose tags were refused"
    assert host.ready["ready"] is False and host.ready["commit"] == repository[1]
    for name in HOSTILE_TAGS:
        assert f"{PREFIX}{name}" in host.hold, f"{name} is not named in the hold: {host.hold}"
        assert f"{PREFIX}{name}" in host.ready["reason"]
    assert "fleet_pull_tag_allowlist" in host.hold
    assert "GPU_FLEET_REPO_REF=" + repository[1] in (host.config / "pull.env").read_text()
    # The tags removed, the next run is ready and lifts the hold.
    host.write_instance_data({})
    done = host.run()
    assert done.returncode == 0 and host.hold is None and host.ready["ready"] is True, show(done)
    assert not host.evil_marker.exists() and host.seen["fleet_pull_repo_url"] == str(repository[0])


def test_a_bad_tag_key_a_value_outside_its_pattern_and_a_group_not_listed_are_all_refused(host):
    host.write_instance_data(
        {
            f"{PREFIX}not-a-name": "1",
            f"{PREFIX}dataset_volume_source": "/dev/sda",
            f"{PREFIX}groups": "canary,secrets",
        }
    )
    done = host.run()
    assert done.returncode == 4, show(done)
    assert "'gpu-fleet:not-a-name'" in host.hold and "'/dev/sda'" in host.hold and "'secrets'" in host.hold
    assert host.seen is None and host.ready["ready"] is False


# --- item 2: a broken inventory is reported ready -------------------------------------------------


def test_a_missing_instance_data_file_holds_the_host(host):
    (host.root / "instance-data.json").unlink()
    done = host.run()
    assert done.returncode == 4 and host.ready["ready"] is False, show(done)
    assert "instance-data.json" in host.hold and "cloud-init status --long" in host.hold, host.hold


@pytest.mark.parametrize("miss", ["another hostname", "not in gpu_hosts"])
def test_a_run_that_matched_no_host_is_not_ready(host, miss):
    if miss == "another hostname":
        # The plugin names the host after instance data; ansible-pull limits the run to this machine's names.
        host.write_instance_data({}, hostname="someone-else")
    else:
        # The site's plays target gpu_hosts: a host outside it runs nothing, and Ansible exits 0.
        config = host.config / "inventory" / "instance_data.yml"
        config.write_text(config.read_text().replace('groups: ["gpu_hosts"]', 'groups: ["elsewhere"]'))
    done = host.run()
    assert done.returncode == 4, show(done)
    assert host.ready["ready"] is False and host.hold and host.seen is None
    if miss == "not in gpu_hosts":
        assert "no play ran on this host" in host.hold, host.hold


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_run_stopped_midway_leaves_the_host_held(host, how):
    assert host.hold is None
    (host.config / "host_vars.yml").write_text(f"probe_dir: {host.probe}\nprobe_sleep: 60\n")
    # systemd stops a unit by signalling its whole control group: here, the run's process group.
    proc = host.run(wait=False, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (host.probe / "sleeping").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    assert host.hold and "has not finished" in host.hold, "the hold is written when a run starts"
    assert host.ready["ready"] is False and host.ready["running"] is True
    os.killpg(proc.pid, how)
    proc.wait(timeout=60)
    assert host.hold, "a stopped run lifted the hold"
    assert host.ready["ready"] is False
    if how == signal.SIGTERM:
        assert proc.returncode == 6 and "stopped by SIGTERM" in host.hold, host.hold
    else:
        assert "has not finished" in host.hold


# --- item 7: secrets ------------------------------------------------------------------------------


def test_a_secrets_file_others_can_read_is_refused(host):
    secrets = host.config / "secrets.yml"
    secrets.write_text("hf_env_token: hf_from_the_secret_store\n")
    secrets.chmod(0o644)
    done = host.run()
    assert done.returncode == 2 and "chmod 0600" in host.hold, show(done)
    assert host.seen is None and host.ready["ready"] is False


# --- item 3, pull's side: a tampered toolchain wheel ----------------------------------------------


def wheel(name: str, version: str) -> bytes:
    """A real, installable wheel of an empty package."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist}/RECORD", record + f"{dist}/RECORD,,\n")
    return buffer.getvalue()


def test_a_tampered_toolchain_wheel_is_refused_named_and_the_host_held(host):
    wheelhouse = host.root / "wheelhouse"
    wheelhouse.mkdir()
    good = wheel("fleetprobe", "1.0")
    path = wheelhouse / "fleetprobe-1.0-py3-none-any.whl"
    path.write_bytes(good)
    lock = f"fleetprobe==1.0 --hash=sha256:{hashlib.sha256(good).hexdigest()}\n"
    (host.config / "pull-requirements.txt").write_text(lock)
    # No toolchain yet: the runner installs one, from the wheelhouse, with real pip.
    shutil.rmtree(host.root / "venv")
    host.settings(GPU_FLEET_TOOLCHAIN_FIND_LINKS=str(wheelhouse))
    # Someone on the way serves another file under the same name.
    path.write_bytes(good + b"\0")
    done = host.run()
    assert done.returncode == 3, show(done)
    assert "fleetprobe" in host.hold and path.name in host.hold, host.hold
    assert hashlib.sha256(good + b"\0").hexdigest() in host.hold and hashlib.sha256(good).hexdigest() in host.hold
    assert not (host.root / "venv" / ".gpu-fleet-lock").exists()
    installed = list((host.root / "venv").glob("lib/python*/site-packages/fleetprobe"))
    assert not installed, "the tampered wheel was installed"


# --- item 1: signed commits -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    """A real GnuPG key (ed25519, no passphrase) and its public keyring, as the image would carry it."""
    if not shutil.which("gpg"):
        pytest.skip("gpg is not installed")
    home = tmp_path_factory.mktemp("gpg")
    signing, keyring = home / "signing", home / "keyring"
    signing.mkdir(mode=0o700)
    keyring.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(signing))
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "fleet <fleet@example.invalid>", "ed25519", "sign", "never"], env=env,
                   check=True, capture_output=True)  # fmt: skip
    key = subprocess.run(["gpg", "--batch", "--list-keys", "--with-colons"], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    fingerprint = next(line.split(":")[9] for line in key.splitlines() if line.startswith("fpr:"))
    public = subprocess.run(["gpg", "--batch", "--export", fingerprint], env=env, check=True, capture_output=True)
    subprocess.run(["gpg", "--batch", "--quiet", "--import"], input=public.stdout, check=True, capture_output=True,
                   env=dict(os.environ, GNUPGHOME=str(keyring)))  # fmt: skip
    yield {**env, "KEY": fingerprint}, keyring
    for path in (signing, keyring):
        subprocess.run(["gpgconf", "--homedir", str(path), "--kill", "all"], check=False, capture_output=True)


def test_with_signatures_required_an_unsigned_commit_is_refused_and_a_signed_one_runs(host, signer, tmp_path):
    sign_env, keyring = signer
    host.settings(GPU_FLEET_VERIFY_COMMIT="yes", GPU_FLEET_GNUPG_HOME=str(keyring))
    done = host.run()
    assert done.returncode == 4, show(done)
    assert "--verify-commit" in (max((host.home / "logs").iterdir(), key=lambda p: p.stat().st_mtime).read_text())
    assert host.seen is None and host.ready["ready"] is False
    assert "verify" in host.hold.lower() or "signature" in host.hold.lower(), host.hold
    signed = tmp_path / "signed"
    ref = make_repository(signed, sign_env)
    shutil.rmtree(host.home / "checkout")
    host.settings(GPU_FLEET_REPO_URL=str(signed), GPU_FLEET_REPO_REF=ref)
    done = host.run()
    assert done.returncode == 0 and host.ready["commit"] == ref and host.hold is None, show(done)


def test_signatures_required_without_a_keyring_are_refused_before_anything_runs(host):
    host.settings(GPU_FLEET_VERIFY_COMMIT="yes", GPU_FLEET_GNUPG_HOME=str(host.root / "none"))
    done = host.run()
    assert done.returncode == 2 and "keyring" in done.stderr and not (host.home / "checkout").exists()
