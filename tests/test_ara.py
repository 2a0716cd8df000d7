"""ARA run records, opt in: the wiring, within make pytest (no ARA needed).

The recording itself, a real site.yml run in ARA's database read back in headless chromium,
is `make ara-test` (tests/ara_browser.py, about 20 s with .venvs/ara). Here: what `make -n`
would run, the lock ARA installs from, and that nobody who does not opt in installs it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTROLLER_LOCK = ROOT / "requirements" / "controller.txt"
ARA_LOCK = ROOT / "requirements" / "ara.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
SHA256 = re.compile(r"--hash=sha256:[0-9a-f]{64}$")
CALLBACKS = '$(.venvs/ara/bin/python -m ara.setup.callback_plugins)"'


def dry_run(*args: str) -> list[str]:
    done = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.replace("\\\n", " ").splitlines()  # a continued command on one line


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, tuple[str, list[str]]]:
    found = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            found[canonical(match[1])] = (match[2], line.split()[1:])
    return found


def playbook_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "ansible-playbook -i inventory/lab" in line]


@pytest.mark.parametrize("seed", ["full", "empty"])
def test_make_lab_with_ara_records_every_playbook_run(seed):
    lines = dry_run("lab", "ARA=1", f"LAB_SEED={seed}", "ARA_DIR=/srv/records")
    runs = playbook_lines(lines)
    assert len(runs) == (3 if seed == "empty" else 2)
    for run in runs:
        assert ".venvs/ara/bin/ansible-playbook -i inventory/lab" in run
        assert "ANSIBLE_CALLBACK_PLUGINS=" in run and CALLBACKS in run
        assert 'ARA_BASE_DIR="/srv/records"' in run
        assert 'ARA_DATABASE_NAME="/srv/records/ansible.sqlite"' in run
    assert any("make ara-ui" in line for line in lines)


def test_make_lab_without_ara_runs_the_controllers_ansible_playbook_unrecorded():
    lines = dry_run("lab", "LAB_SEED=empty")
    runs = playbook_lines(lines)
    assert len(runs) == 3
    for run in runs:
        assert run.startswith(".venvs/controller/bin/ansible-playbook ")
    assert not [line for line in lines if "ARA_" in line or ".venvs/ara" in line or "ara-ui" in line]


def test_ara_ui_serves_on_this_machine_at_the_port_asked_and_says_where():
    lines = dry_run("ara-ui", "ARA_PORT=9123", "ARA_DIR=/srv/records")
    server = [line for line in lines if "ara-manage runserver" in line]
    assert len(server) == 1
    assert server[0].endswith("runserver --noreload 127.0.0.1:9123")
    assert 'ARA_DATABASE_NAME="/srv/records/ansible.sqlite"' in server[0]
    assert any("http://127.0.0.1:9123/" in line for line in lines)


@pytest.mark.parametrize("target, test_file", [("ara-test", "ara_browser.py"), ("ara-lab-test", "ara_lab_browser.py")])
def test_the_browser_tests_run_with_aras_pytest_and_make_pytest_does_not_collect_them(target, test_file):
    lines = dry_run(target)
    assert any(".venvs/ara/bin/pytest" in line and f"tests/{test_file}" in line for line in lines)
    assert (ROOT / "tests" / test_file).is_file()
    assert not test_file.startswith("test_")


def test_the_ara_lock_adds_to_the_controller_lock_exact_and_hashed():
    controller = pins(CONTROLLER_LOCK)
    ara = pins(ARA_LOCK)
    wanted = re.search(r"^ara\[server\]==(\S+)", (ROOT / "requirements" / "ara.in").read_text(), re.M)
    assert wanted and ara["ara"][0] == wanted[1]
    # The server extra: the embedded UI and its SQLite database.
    assert {"django", "djangorestframework", "whitenoise"} <= set(ara)
    for name, (_version, options) in ara.items():
        assert options and all(SHA256.match(option) for option in options), f"{name} has no sha256"
    # What ARA adds only: a pin here that the controller lock also has could disagree with it.
    assert not set(ara) & set(controller)
    # Operators who do not opt in install nothing of it.
    assert not {"ara", "django"} & set(controller)
    assert "make ara-lock" in ARA_LOCK.read_text()


def test_the_ara_venv_is_the_controller_lock_then_the_ara_lock_with_hashes():
    lines = dry_run("-B", "ara-venv")
    installs = [line for line in lines if "pip install" in line]
    assert installs[0].endswith("-r requirements/controller.txt")
    assert "--require-hashes" in installs[1] and installs[1].endswith("-r requirements/ara.txt")
    assert any(".venvs/ara/bin/pip check" in line for line in lines)


def test_the_operator_doc_says_how_to_record_and_what_was_verified():
    doc = (ROOT / "docs" / "operator.md").read_text()
    section = doc[doc.index("## Run records (ARA)") :]
    for words in ("make ara-venv", "ARA=1", "make ara-ui", "ara-env", "ARA_DIR", "ara.setup.callback_plugins"):
        assert words in section, words
    assert "not tested against an ARA API server" in squeeze(section)
    assert "make ara-ui" in (ROOT / "README.md").read_text()


def squeeze(words: str) -> str:
    return " ".join(words.split())
