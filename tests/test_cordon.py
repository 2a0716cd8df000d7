"""The cordon (hf_loader_cordon_dir): the training unit's real gate, the real playbooks
(cordon.yml, uncordon.yml, train.yml) on this machine, and the parsing every reader shares.

Each attack is performed: a job started on a cordoned host, a cordon the training user
cannot see, a garbled cordon file, an owner lifting another's cordon, a cordon without a
reason. The test fails if the attack works.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpu_fleet.common.plugins.filter.cordon import FilterModule as CordonFilters
from ansible_collections.gpu_fleet.common.plugins.module_utils.cordon import errors, owned_by, parse, record, text
from ansible_collections.gpu_fleet.common.plugins.modules.path_state import listing

from conftest import run_playbook

ROOT = Path(__file__).resolve().parent.parent
UNIT_TEMPLATE = ROOT / "roles" / "hf_loader" / "templates" / "hf-train@.service.j2"
CONTENTS_MAX_BYTES = 1048576  # path_state's default


# ---- the training unit's gate: the ExecStartPre= line of the real template, run by sh ----


def gate_argv(cordon_dir: Path) -> list[str]:
    """The cordon gate's command as systemd runs it: the template's line with the folder filled in,
    `$$` unescaped to `$` (systemd's own escape), split into words as systemd splits them."""
    lines = [line for line in UNIT_TEMPLATE.read_text().splitlines() if line.startswith("ExecStartPre=")]
    (gate,) = [line for line in lines if line.endswith("cordon {{ hf_loader_cordon_dir }}")]
    command = gate.removeprefix("ExecStartPre=").replace("{{ hf_loader_cordon_dir }}", str(cordon_dir))
    assert "%" not in command, "a % in the gate would be a systemd specifier"
    return shlex.split(command.replace("$$", "$"))


def run_gate(cordon_dir: Path, as_user: str | None = None) -> subprocess.CompletedProcess:
    argv = gate_argv(cordon_dir)
    if as_user:
        # The unit runs its ExecStartPre= as the training user, not root.
        argv = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups", *argv]
        argv[2] = "--regid=" + grp.getgrgid(pwd.getpwnam(as_user).pw_gid).gr_name
    return subprocess.run(argv, capture_output=True, text=True, check=False)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs the gate as another user (setpriv)")


@pytest.fixture
def state_dir():
    """A /var/lib/gpu-fleet stand-in that others may pass through, as roles/fleet_pull keeps it
    (outside pytest's own folder, which only its owner may enter)."""
    top = Path(tempfile.mkdtemp(prefix="cordon-test-"))
    top.chmod(0o755)
    home = top / "gpu-fleet"
    home.mkdir()
    home.chmod(0o711)
    yield home
    shutil.rmtree(top)


def cordon(folder: Path, owner: str, reason: str, **more) -> Path:
    folder.mkdir(mode=0o755, exist_ok=True)
    path = folder / owner
    path.write_text(
        json.dumps({"owner": owner, "reason": reason, "user": "alice", "at": "2026-01-01T00:00:00Z", **more})
    )
    path.chmod(0o644)
    return path


def test_gate_lets_an_uncordoned_host_start(state_dir):
    assert run_gate(state_dir / "cordon").returncode == 0  # no folder yet: never cordoned
    (state_dir / "cordon").mkdir(mode=0o755)
    assert run_gate(state_dir / "cordon").returncode == 0  # every cordon lifted


@needs_root
def test_gate_refuses_a_cordoned_host_as_the_training_user_and_names_every_reason(state_dir):
    folder = state_dir / "cordon"
    cordon(folder, "operator", "GPU 3 throws Xid 79, RMA 1234")
    cordon(folder, "upgrade-driver", "driver rollout to 580.95.05 failed at verification")
    done = run_gate(folder, as_user="nobody")
    assert done.returncode != 0
    assert "GPU 3 throws Xid 79, RMA 1234" in done.stderr
    assert "driver rollout to 580.95.05 failed" in done.stderr


@needs_root
def test_gate_refuses_when_the_training_user_cannot_see_the_cordon(state_dir):
    folder = state_dir / "cordon"
    cordon(folder, "operator", "hidden from the training user")
    # A folder the training user cannot list: the cordon inside must still hold.
    folder.chmod(0o700)
    done = run_gate(folder, as_user="nobody")
    assert done.returncode != 0 and "cannot read the cordon folder" in done.stderr
    # A parent it cannot pass through: it cannot even tell whether a cordon exists.
    folder.chmod(0o755)
    state_dir.chmod(0o700)
    done = run_gate(folder, as_user="nobody")
    assert done.returncode != 0 and "cannot read the cordon folder" in done.stderr


@needs_root
def test_gate_refuses_a_cordon_file_it_cannot_parse_or_read(state_dir):
    folder = state_dir / "cordon"
    folder.mkdir(mode=0o755)
    garbled = folder / "operator"
    garbled.write_text("not json at all")
    garbled.chmod(0o600)  # unreadable to the training user too
    assert run_gate(folder, as_user="nobody").returncode != 0


def test_gate_ignores_the_temporary_files_of_an_atomic_write(state_dir):
    folder = state_dir / "cordon"
    folder.mkdir(mode=0o755)
    (folder / ".ansible_tmp_operator").write_text("{}")
    assert run_gate(folder).returncode == 0


# ---- the parsing every reader shares (train.yml, the rollout) ----


def listed(folder: Path) -> list[dict]:
    """The folder's listing entries as gpu_fleet.common.path_state returns them with
    listing_contents (roles/hf_loader/tasks/cordon_read.yml): path, size, mtime, text."""
    return listing(str(folder), CONTENTS_MAX_BYTES)


def test_parse_reads_every_owner_and_keeps_a_garbled_file_as_a_cordon(tmp_path):
    cordon(tmp_path, "operator", "RMA 1234", skip_rollouts=True)
    (tmp_path / "upgrade-driver").write_text("half a write")
    (tmp_path / "empty").write_text("")
    found = parse(listed(tmp_path))
    assert [c["owner"] for c in found] == ["empty", "operator", "upgrade-driver"]
    assert found[0]["reason"] == "(an empty cordon file)"
    assert found[1] == {
        "owner": "operator",
        "file": str(tmp_path / "operator"),
        "reason": "RMA 1234",
        "user": "alice",
        "at": "2026-01-01T00:00:00Z",
        "skip_rollouts": True,
    }
    assert found[2]["reason"] == "half a write" and found[2]["skip_rollouts"] is False
    assert owned_by(found, "operator") == [found[1]]
    assert text(found[1:2]) == "operator (alice, 2026-01-01T00:00:00Z): RMA 1234 [keeps the host out of rollouts]"


def test_a_file_lifted_between_the_listing_and_the_read_is_no_cordon(tmp_path):
    # path_state lists the folder, then reads each file: a lift in between leaves text null.
    cordon(tmp_path, "operator", "RMA 1234")
    lifted = {"path": str(tmp_path / "upgrade-driver"), "size": 90, "mtime": 0.0, "text": None}
    cordon_parse = CordonFilters().filters()["cordon_parse"]
    assert [c["owner"] for c in cordon_parse([lifted, *listed(tmp_path)])] == ["operator"]
    assert cordon_parse([lifted]) == []


def test_skip_rollouts_must_be_json_true_not_any_truthy_text(tmp_path):
    cordon(tmp_path, "operator", "x", skip_rollouts="no")
    assert parse(listed(tmp_path))[0]["skip_rollouts"] is False


@pytest.mark.parametrize(
    ("state", "owner", "reason", "wanted"),
    [
        ("present", "operator", "", "needs a reason"),
        ("present", "operator", "   ", "needs a reason"),
        ("present", "operator", "two\nlines", "one line"),
        ("present", "../etc/passwd", "x", "hf_loader_cordon_owner"),
        ("present", "Operator", "x", "hf_loader_cordon_owner"),
        ("present", "operator\n", "x", "hf_loader_cordon_owner"),  # `$` would let it through
        ("held", "operator", "x", "hf_loader_cordon_state"),
    ],
)
def test_bad_requests_are_refused_naming_the_variable(state, owner, reason, wanted):
    assert any(wanted in problem for problem in errors(state, owner, reason))


def test_lifting_needs_no_reason_and_a_record_is_what_the_file_holds():
    assert errors("absent", "upgrade-driver", "") == []
    assert record("operator", " RMA 1234 ", "alice", "2026-01-01T00:00:00Z") == {
        "owner": "operator",
        "reason": "RMA 1234",
        "user": "alice",
        "at": "2026-01-01T00:00:00Z",
        "skip_rollouts": False,
    }
    with pytest.raises(ValueError, match="needs a reason"):
        record("operator", "", "alice", "now")


# ---- the real playbooks on this machine (local connection, no become) ----


@pytest.fixture
def fleet(tmp_path: Path) -> dict:
    """An inventory of this machine whose hf_loader paths lie under tmp_path."""
    paths = {
        "cordon": tmp_path / "gpu-fleet" / "cordon",
        "config": tmp_path / "etc-hf-loader",
        "report": tmp_path / "last-cache-test.json",
        "hold": tmp_path / "gpu-fleet" / "hold",
    }
    inventory = tmp_path / "inventory.yml"
    host = {
        "ansible_connection": "local",
        "ansible_become": False,
        "ansible_python_interpreter": sys.executable,
        "hf_loader_cordon_dir": str(paths["cordon"]),
        "hf_loader_config_dir": str(paths["config"]),
        "hf_loader_report_file": str(paths["report"]),
        "hf_loader_group": "root",  # the launcher environment's group; no training account here
    }
    inventory.write_text(yaml.safe_dump({"gpu_hosts": {"hosts": {"gpu-01": host}}}))
    return {"inventory": inventory, **paths}


def playbook(fleet: dict, name: str, *args: str) -> tuple[int, str]:
    return run_playbook(fleet["inventory"], name, *args)


def recap(output: str) -> dict:
    match = re.search(r"gpu-01\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", output)
    assert match, output[-2000:]
    return {"ok": int(match[1]), "changed": int(match[2]), "failed": int(match[3])}


def test_a_cordon_without_a_reason_is_refused_before_anything_changes(fleet):
    rc, out = playbook(fleet, "cordon.yml")
    assert rc != 0 and "A cordon needs a reason" in out
    assert not fleet["cordon"].exists()


def test_cordon_then_train_refuses_the_host_and_uncordon_lets_it_through(fleet):
    rc, out = playbook(fleet, "cordon.yml", "-e", "cordon_reason='GPU 3 throws Xid 79, RMA 1234'")
    assert rc == 0, out[-3000:]
    assert json.loads((fleet["cordon"] / "operator").read_text())["reason"] == "GPU 3 throws Xid 79, RMA 1234"
    assert oct(fleet["cordon"].stat().st_mode & 0o777) == "0o755"
    assert oct((fleet["cordon"] / "operator").stat().st_mode & 0o777) == "0o644"

    # Again with the same reason: nothing changes, the cordon keeps who set it and when.
    before = (fleet["cordon"] / "operator").read_text()
    rc, out = playbook(fleet, "cordon.yml", "-e", "cordon_reason='GPU 3 throws Xid 79, RMA 1234'")
    assert rc == 0 and recap(out)["changed"] == 0, out[-3000:]
    assert (fleet["cordon"] / "operator").read_text() == before

    # The attack: start training on the cordoned host. A ready cache test report is there, so
    # only the cordon can stop it, before the launcher environment is written.
    fleet["report"].write_text(json.dumps({"ready": True, "resolution": {"mode": "arrow"}, "message": "ready"}))
    rc, out = playbook(fleet, "train.yml")
    assert rc != 0
    assert "Not starting training on gpu-01: it is cordoned: operator" in out
    assert "GPU 3 throws Xid 79, RMA 1234" in out and "playbooks/uncordon.yml -l gpu-01" in out
    assert not fleet["config"].exists(), "train.yml changed the host before refusing it"

    rc, out = playbook(fleet, "uncordon.yml")
    assert rc == 0 and "gpu-01 is not cordoned" in out, out[-3000:]
    assert list(fleet["cordon"].iterdir()) == []
    # Past the cordon now: it stops at the next check (no training configuration here).
    fleet["config"].mkdir()
    rc, out = playbook(fleet, "train.yml")
    assert "it is cordoned" not in out
    assert "train-default.yaml does not exist" in out, out[-3000:]


def test_an_operator_lift_leaves_the_rollouts_cordon_and_train_names_it(fleet):
    fleet["cordon"].parent.mkdir()
    cordon(fleet["cordon"], "upgrade-driver", "driver rollout to 580.95.05 failed at verification")
    playbook(fleet, "cordon.yml", "-e", "cordon_reason=maintenance")
    rc, out = playbook(fleet, "uncordon.yml")
    assert rc == 0 and "gpu-01 stays cordoned: upgrade-driver" in out, out[-3000:]
    assert [path.name for path in fleet["cordon"].iterdir()] == ["upgrade-driver"]
    rc, out = playbook(fleet, "train.yml")
    assert rc != 0 and "driver rollout to 580.95.05 failed at verification" in out
    assert "-e cordon_owner=upgrade-driver" in out


def test_train_refuses_a_host_pull_mode_holds(fleet):
    fleet["cordon"].parent.mkdir()
    fleet["hold"].write_text("gpu-fleet-pull failed at 2026-01-01T00:00:00Z (exit 4): the cache test failed\n")
    rc, out = playbook(fleet, "train.yml", "-e", f"hf_loader_train_hold_file={fleet['hold']}")
    assert rc != 0 and "pull mode holds it" in out and "the cache test failed" in out, out[-3000:]


def test_check_mode_sets_no_cordon(fleet):
    rc, out = playbook(fleet, "cordon.yml", "--check", "-e", "cordon_reason=maintenance")
    assert rc == 0, out[-3000:]
    assert not (fleet["cordon"] / "operator").exists()


def test_a_hand_made_cordon_is_known_and_lifted_by_its_file_name(fleet):
    # A file written by hand under a name of its own, its JSON naming another owner: the
    # name is what train.yml shows and what uncordon.yml lifts, so the hold can be lifted.
    fleet["cordon"].mkdir(parents=True)
    (fleet["cordon"] / "RMA-1234.json").write_text(json.dumps({"owner": "operator", "reason": "GPU 3 replaced"}))
    fleet["report"].write_text(json.dumps({"ready": True, "resolution": {"mode": "arrow"}, "message": "ready"}))
    rc, out = playbook(fleet, "train.yml")
    assert rc != 0 and "it is cordoned: RMA-1234.json" in out, out[-3000:]
    assert "-e cordon_owner=RMA-1234.json" in out
    rc, out = playbook(fleet, "uncordon.yml", "-e", "cordon_owner=RMA-1234.json")
    assert rc == 0 and "gpu-01 is not cordoned" in out, out[-3000:]
    assert list(fleet["cordon"].iterdir()) == []


def test_a_cordon_folder_among_the_systems_files_is_refused_before_anything_changes(fleet):
    # Lifting removes <folder>/<owner>: with a folder in /etc, an owner could name a system file.
    # (The owner named here exists nowhere, so the old behaviour removes nothing either.)
    rc, out = playbook(
        fleet, "uncordon.yml", "-e", "hf_loader_cordon_dir=/etc/ssh", "-e", "cordon_owner=no-such-file-here"
    )
    assert rc != 0 and "hf_loader_cordon_dir '/etc/ssh' is inside /etc" in out, out[-3000:]
    assert "/var/lib/gpu-fleet/cordon" in out
    for folder, why in (("/var/lib/gpu-fleet/../../../etc/cron.d", "'..' segment"), ("/var", "top-level")):
        rc, out = playbook(
            fleet, "cordon.yml", "--check", "-e", f"hf_loader_cordon_dir={folder}", "-e", "cordon_reason=x"
        )
        assert rc != 0 and f"hf_loader_cordon_dir '{folder}' is" in out and why in out, out[-3000:]
