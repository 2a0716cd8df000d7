"""The munge key: the slurm_node role's writer (roles/slurm_node/files/munge_key.py, run for real on
real files) and its preflight (the real role, run by ansible-playbook on this machine), which refuses a
missing or short key, a key file made world-readable or swapped for a link, and a Slurm version pair
the controller cannot serve, before anything changes.

Each attack is performed and fails the test if it works: the key written through a link planted at
its path or at the writer's temporary name, a key left readable by others, a bad key or version that
gets past the preflight, a key printed in the output.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRITER = ROOT / "roles" / "slurm_node" / "files" / "munge_key.py"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
OWNER = getpass.getuser()  # the munge account of a real host; whoever runs the tests here
KEY = os.urandom(1024)
KEY_B64 = base64.b64encode(KEY).decode()


def write(path: Path, mode: str = "write", key: str = KEY_B64) -> str:
    done = subprocess.run(
        [sys.executable, "-I", "-c", WRITER.read_text(), str(path), mode, OWNER],
        input=key,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def private(path: Path) -> bool:
    st = path.lstat()
    return stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o400


def test_the_key_is_written_0400_and_a_rerun_changes_nothing(tmp_path):
    key = tmp_path / "munge.key"
    assert write(key, "check") == "changed" and not key.exists()  # check mode writes nothing
    assert write(key) == "changed"
    assert key.read_bytes() == KEY and private(key)
    assert write(key) == "unchanged" and write(key, "check") == "unchanged"
    other = base64.b64encode(os.urandom(64)).decode()
    assert write(key, key=other) == "changed" and key.read_bytes() == base64.b64decode(other) and private(key)
    assert not [p.name for p in tmp_path.iterdir() if p.name != "munge.key"]  # no temporary file left


def test_a_key_made_world_readable_is_made_private_again(tmp_path):
    key = tmp_path / "munge.key"
    write(key)
    key.chmod(0o644)  # the attack: the same key, readable by every account
    assert write(key) == "changed" and private(key)


def test_a_link_at_the_key_path_is_replaced_never_written_through(tmp_path):
    elsewhere = tmp_path / "readable-by-all"
    elsewhere.write_text("attacker's file\n")
    elsewhere.chmod(0o644)
    key = tmp_path / "munge.key"
    key.symlink_to(elsewhere)  # the attack: the key's path points at a file others can read
    assert write(key) == "changed"
    assert elsewhere.read_text() == "attacker's file\n"  # nothing written through the link
    assert not key.is_symlink() and private(key) and key.read_bytes() == KEY


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path):
    elsewhere = tmp_path / "readable-by-all"
    elsewhere.write_text("")
    elsewhere.chmod(0o666)
    (tmp_path / ".munge-key.tmp").symlink_to(elsewhere)  # the attack: the writer's next temporary file
    key = tmp_path / "munge.key"
    assert write(key) == "changed"
    assert elsewhere.read_text() == "" and private(key) and key.read_bytes() == KEY


def test_a_key_that_is_not_base64_is_refused_by_the_writer(tmp_path):
    done = subprocess.run(
        [sys.executable, "-I", "-c", WRITER.read_text(), str(tmp_path / "k"), "write", OWNER],
        input="not base64 at all!",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and not (tmp_path / "k").exists()


PREFLIGHT_PLAY = """
- name: The slurm_node role on this machine
  hosts: all
  gather_facts: true
  gather_subset: [min, hardware, network]
  roles:
    - role: slurm_node
"""


def test_the_preflight_refuses_bad_keys_key_files_and_versions_before_any_change(tmp_path):
    # Two hosts of this machine, each with attacks the preflight must refuse.
    readable = tmp_path / "readable" / "munge.key"
    readable.parent.mkdir()
    readable.write_bytes(KEY)
    readable.chmod(0o644)  # the attack: a key file made world-readable
    linked = tmp_path / "linked" / "munge.key"
    linked.parent.mkdir()
    linked.symlink_to(readable)  # the attack: a symlinked key path
    common = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "slurm_node_conf_server": "ctl01",
    }
    hosts = {
        # No key at all, a readable key file, a Slurm 21.08 controller: this host's slurmd (22.05) is newer.
        "readable": {"slurm_node_munge_key_file": str(readable), "slurm_node_controller_version": "21.08.8"},
        # A 16-byte key, a linked key file, a controller 4 major releases ahead (Debian 13, Debian 12 nodes).
        "linked": {"slurm_node_munge_key": base64.b64encode(b"x" * 16).decode(),
                   "slurm_node_munge_key_file": str(linked), "slurm_node_controller_version": "24.11.5"},
    }  # fmt: skip
    inventory = {"all": {"hosts": {name: {**common, **values} for name, values in hosts.items()}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    (tmp_path / "play.yml").write_text(PREFLIGHT_PLAY)
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["ANSIBLE_CACHE_PLUGIN_CONNECTION"] = str(tmp_path / "facts")
    done = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(tmp_path / "inventory.json"), str(tmp_path / "play.yml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "failed=1" in out and "changed=0" in out and "changed=1" not in out, out[-3000:]
    # The output callback writes YAML: an apostrophe comes out doubled in a quoted message.
    sections = {name: out.split(f"fatal: [{name}]", 1)[1].split("fatal: [", 1)[0].replace("''", "'") for name in hosts}
    readable_msg = " ".join(sections["readable"].split())
    assert "slurm_node_munge_key must be the cluster's munge key" in readable_msg and "got 0 characters" in readable_msg
    assert "has mode 0644: others could read or write it, so treat the key as leaked" in readable_msg
    assert "newer than the slurmctld" in readable_msg
    linked_msg = " ".join(sections["linked"].split())
    assert "is a symbolic link to" in linked_msg and "4 major releases ahead" in linked_msg
    assert "got 24 characters" in linked_msg
    # Nothing changed: the key files are as they were, nothing written where none was.
    assert readable.read_bytes() == KEY and stat.S_IMODE(readable.stat().st_mode) == 0o644
    assert linked.is_symlink() and linked.resolve() == readable
    assert KEY_B64 not in out and KEY_B64[:40] not in out  # the key is never printed
