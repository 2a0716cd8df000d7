"""The locks hosts install from carry a sha256 for every wheel, and a wheel that is not the one
hashed is refused: by pip as the hf_loader role runs it (its own install task, real pip, real
wheels), by the wheelhouse build, and before any change by the role's preflight.

The attack: whoever serves the wheels (the wheelhouse, a plain-HTTP location, the path between)
changes or replaces one. Each test here performs it and fails if the wheel gets installed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ROLE = ROOT / "roles" / "hf_loader"
HOST_LOCKS = [ROOT / "requirements" / "pull.txt", ROOT / "requirements" / "loader-prod.txt"]
WHEELHOUSE = Path(os.environ.get("WHEELHOUSE_DIR", "/var/cache/gpu-fleet/wheelhouse"))
SHA256 = re.compile(r"--hash=sha256:[0-9a-f]{64}$")

spec = importlib.util.spec_from_file_location("hash_lock", ROOT / "scripts" / "hash-lock.py")
hash_lock = importlib.util.module_from_spec(spec)
sys.modules["hash_lock"] = hash_lock  # its dataclass looks its module up
spec.loader.exec_module(hash_lock)


def pins(lock: Path) -> list:
    return [line for line in hash_lock.parse(lock.read_text()) if isinstance(line, hash_lock.Pin)]


def pin_line(lock: Path, name: str) -> str:
    return next(line for line in lock.read_text().splitlines() if line.lower().startswith(name.lower() + "=="))


sha256 = hash_lock.sha256  # streamed: torch's wheel is about 800 MB


@pytest.mark.parametrize("lock", HOST_LOCKS, ids=lambda lock: lock.name)
def test_every_pin_of_a_host_lock_carries_a_sha256(lock):
    lines = [line for line in lock.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines
    for line in lines:
        options = line.split()[1:]
        assert options, f"{lock.name}: {line} has no --hash"
        assert all(SHA256.match(option) for option in options), f"{lock.name}: {line}"
    assert "hash-lock" in lock.read_text(), f"{lock.name}: its header says how to regenerate the hashes"


def test_the_pull_lock_is_what_hash_lock_makes_from_a_fresh_download():
    """The generator for real: pip download of each pin for Python 3.11 and 3.13 with the
    wheelhouse's flags, every wheel hashed. A binary pin has one hash a Python."""
    done = subprocess.run(
        [sys.executable, "scripts/hash-lock.py", "--check", "requirements/pull.txt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    by_name = {hash_lock.canonical(pin.name): pin for pin in pins(ROOT / "requirements" / "pull.txt")}
    for binary in ("pyyaml", "markupsafe", "rpds-py", "cffi"):
        assert len(by_name[binary].hashes) == 2, f"{binary}: one wheel for cp311, one for cp313"


@pytest.mark.parametrize("tag", ["cp311", "cp313"])
def test_the_wheelhouse_holds_for_each_pin_a_wheel_whose_hash_the_lock_gives(tag):
    """Every pin of the production lock has a wheel for each target Python in the wheelhouse,
    and that wheel's sha256 is one the lock lists (so the hashes cover cp311 and cp313)."""
    folder = WHEELHOUSE / tag
    if not any(folder.glob("*.whl")):
        pytest.skip(f"no wheelhouse at {folder} (make wheelhouse)")
    wheels: dict[str, list[Path]] = {}
    for wheel in folder.glob("*.whl"):
        match = hash_lock.WHEEL.match(wheel.name)
        key = hash_lock.canonical(match["name"]) + "==" + hash_lock.canonical(match["version"])
        wheels.setdefault(key, []).append(wheel)
    for pin in pins(ROOT / "requirements" / "loader-prod.txt"):
        key = hash_lock.canonical(pin.name) + "==" + hash_lock.canonical(pin.version)
        assert key in wheels, f"{folder} has no wheel of {pin.name}=={pin.version}"
        assert {sha256(wheel) for wheel in wheels[key]} & pin.hashes, (
            f"no wheel of {pin.name}=={pin.version} in {folder} has a sha256 the lock lists"
        )


def test_add_missing_hashes_only_the_pins_without_and_keeps_the_others(tmp_path):
    """The lab's light lock: production pins keep the production hashes (whatever the download
    now says), the pin added without one gets the sha256 of its wheel."""
    pull = ROOT / "requirements" / "pull.txt"
    kept = pin_line(pull, "PyYAML")
    lock = tmp_path / "light.txt"
    lock.write_text(f"# derived\n{kept}\npackaging==26.4\n")
    text = hash_lock.hash_lock(lock, ["3.11"], add_missing=True)
    assert text == f"# derived\n{kept}\n{pin_line(pull, 'packaging')}\n"


def test_the_generator_refuses_what_is_not_a_pin(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("PyYAML>=6\n")
    with pytest.raises(hash_lock.LockError, match="not a name==version pin"):
        hash_lock.hash_lock(lock, ["3.11"])
    lock.write_text("PyYAML==6.0.4 --index-url http://mirror.invalid/simple\n")
    with pytest.raises(hash_lock.LockError, match="not a --hash=sha256: option"):
        hash_lock.hash_lock(lock, ["3.11"])


def test_the_wheelhouse_build_refuses_a_lock_without_hashes(tmp_path):
    lock = tmp_path / "plain.txt"
    lock.write_text("# plain\nPyYAML==6.0.4\n" + pin_line(ROOT / "requirements" / "pull.txt", "packaging") + "\n")
    env = dict(os.environ, WHEELHOUSE_DIR=str(tmp_path / "wh"), WHEELHOUSE_LOCK=str(lock), WHEELHOUSE_PACKAGE="no")
    done = subprocess.run(
        ["bash", "scripts/build-wheelhouse.sh"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pins without --hash: PyYAML==6.0.4." in done.stderr and "scripts/hash-lock.py" in done.stderr
    assert not any((tmp_path / "wh").glob("*/*.whl"))


# The role's own install task, run by Ansible on this machine against a real wheelhouse.
LOCK_NAMES = ("PyYAML", "packaging")


@pytest.fixture(scope="module")
def genuine_wheels(tmp_path_factory) -> Path:
    """The cp311 wheels of two pins of a host lock: from the wheelhouse when it holds them, else
    downloaded by pip, which checks them against the lock's hashes."""
    folder = tmp_path_factory.mktemp("genuine")
    lock = folder / "lock.txt"
    lock.write_text("".join(pin_line(ROOT / "requirements" / "pull.txt", name) + "\n" for name in LOCK_NAMES))
    hashes = {h for pin in pins(lock) for h in pin.hashes}
    for wheel in (WHEELHOUSE / "cp311").glob("*.whl"):
        if wheel.name.lower().startswith(tuple(n.lower() for n in LOCK_NAMES)) and sha256(wheel) in hashes:
            shutil.copy(wheel, folder)
    if len(list(folder.glob("*.whl"))) < len(LOCK_NAMES):
        download = [BIN / "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:", "--require-hashes"]
        subprocess.run([*download, "--dest", folder, "-r", lock], check=True)
    assert len(list(folder.glob("*.whl"))) == len(LOCK_NAMES)
    return folder


def run_role_install(tmp_path: Path, wheelhouse: Path, lock: Path):
    """The hf_loader role's "Install the lock" block, as install.yml has it, with the role's
    defaults and vars: the real ansible.builtin.pip module and pip in a new venv."""
    tasks = yaml.safe_load((ROLE / "tasks" / "install.yml").read_text())
    block = next(task for task in tasks if "block" in task and "Install the lock" in task["name"])
    play = [
        {
            "name": "The role's lock install",
            "hosts": "localhost",
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "tasks": [block],
            "handlers": [{"name": "Cache test", "listen": "hf-cache-test", "ansible.builtin.debug": {"msg": "x"}}],
        }
    ]
    playbook = tmp_path / "install.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    overrides = {
        "hf_loader_install_from": "wheelhouse",
        "hf_loader_host_wheelhouse": str(wheelhouse),
        "hf_loader_venv": str(tmp_path / "venv"),
        "hf_loader_lock_file": str(lock),
        "__hf_loader_lock_dest": str(lock),
        "__hf_loader_missing_pins": [pin.name for pin in pins(lock)],
        "ansible_python_interpreter": sys.executable,
    }
    # This machine's own pip settings (extra find-links) stay out: only the wheelhouse serves.
    env = {name: value for name, value in os.environ.items() if not name.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, ANSIBLE_NOCOLOR="1")
    env["PATH"] = f"{BIN}:{env['PATH']}"
    done = subprocess.run(
        [BIN / "ansible-playbook", "-i", "localhost,", "-c", "local", playbook, "-e", json.dumps(overrides)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return done, tmp_path / "venv"


def installed(venv: Path) -> str:
    return subprocess.run(
        [venv / "bin" / "pip", "list", "--format=freeze"], capture_output=True, text=True, check=False
    ).stdout.lower()


def host_lock(tmp_path: Path) -> Path:
    lock = tmp_path / "requirements.lock"
    lock.write_text("".join(pin_line(ROOT / "requirements" / "pull.txt", name) + "\n" for name in LOCK_NAMES))
    return lock


def test_the_role_installs_the_genuine_wheels_with_their_hashes_checked(tmp_path, genuine_wheels):
    wheelhouse = shutil.copytree(genuine_wheels, tmp_path / "wheelhouse")
    done, venv = run_role_install(tmp_path, wheelhouse, host_lock(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pyyaml==6.0.4" in installed(venv) and "packaging==" in installed(venv)


def test_the_role_refuses_a_tampered_wheel_and_names_it(tmp_path, genuine_wheels):
    """One bit of PyYAML's wheel flipped: the same name and size, other bytes."""
    wheelhouse = shutil.copytree(genuine_wheels, tmp_path / "wheelhouse")
    (tampered,) = wheelhouse.glob("pyyaml-*.whl")
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    done, venv = run_role_install(tmp_path, wheelhouse, host_lock(tmp_path))
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert f"pip refused to install PyYAML==6.0.4 from file://{tampered}" in output, output
    assert "its sha256 is not the one hf_loader_lock_file" in output
    assert "pyyaml" not in installed(venv)


def test_the_role_refuses_a_wheel_swapped_for_another_build(tmp_path, genuine_wheels):
    """packaging's wheel rebuilt with other code: a valid wheel of the same name and version, not
    the one the lock hashed. pip checks every wheel before it installs any: the genuine PyYAML
    beside it is not installed either."""
    wheelhouse = shutil.copytree(genuine_wheels, tmp_path / "wheelhouse")
    (swapped,) = wheelhouse.glob("packaging-*.whl")
    rebuilt = tmp_path / "rebuilt"
    shutil.unpack_archive(swapped, rebuilt, "zip")
    (rebuilt / "packaging" / "__init__.py").write_text("import os  # anything the builder wants\n", encoding="utf-8")
    swapped.unlink()
    shutil.make_archive(str(swapped.with_suffix("")), "zip", rebuilt)
    swapped.with_suffix(".zip").rename(swapped)
    done, venv = run_role_install(tmp_path, wheelhouse, host_lock(tmp_path))
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "pip refused to install packaging==26.4 from file://" + str(swapped) in output, output
    assert "pyyaml" not in installed(venv) and "packaging" not in installed(venv)


def render_preflight_check(tmp_path: Path, lock: Path) -> dict:
    """Preflight's own check on unhashed pins (its task's args), rendered with the role's vars."""
    preflight = yaml.safe_load((ROLE / "tasks" / "preflight.yml").read_text())
    module = "gpu_fleet.common.preflight"
    checks = next(task[module]["checks"] for task in preflight if module in task)
    (check,) = [check for check in checks if "__hf_loader_unhashed_pins" in check["ok"]]
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "tasks": [{"ansible.builtin.debug": {"msg": check}}],
        }
    ]
    playbook = tmp_path / "unhashed.yml"
    playbook.write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json")
    done = subprocess.run(
        [BIN / "ansible-playbook", "-i", "localhost,", "-c", "local", playbook, "-e", f"hf_loader_lock_file={lock}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]


def test_the_role_refuses_a_lock_without_hashes_before_any_change(tmp_path):
    """A lock with one pin left unhashed: refused, naming the pin, the variable and the fix."""
    lock = tmp_path / "lock.txt"
    lock.write_text("# a comment\n" + pin_line(ROOT / "requirements" / "pull.txt", "PyYAML") + "\npackaging==26.4\n")
    rendered = render_preflight_check(tmp_path, lock)
    assert str(rendered["ok"]) == "False", rendered
    assert f"hf_loader_lock_file {lock} has pins without a --hash=sha256: option (packaging==26.4)" in rendered["msg"]
    assert f"python3 scripts/hash-lock.py {lock}" in rendered["msg"]
    # A missing lock is the check beside it ("must exist"): this one still renders, and passes.
    assert str(render_preflight_check(tmp_path, tmp_path / "none.txt")["ok"]) == "True"
