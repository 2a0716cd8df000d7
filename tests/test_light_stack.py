"""The lab library's light stack (scripts/lablib/stack.py's light_stack): built once per machine
and reused by every lab, also by labs that ask for it at the same time.

The real light_stack, hash-lock.py and build-wheelhouse.sh run; two seams keep it small and
offline: stack.LIGHT_SOURCE is a lock of three pins instead of requirements/loader-prod.txt, and
PIP is a stand-in pip that logs each call and writes a small wheel for each pin it is asked to
download (and one for the project's package when asked to build it)."""

import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from lablib import stack  # noqa: E402

FAKE_PIP = """#!{python}
import os, sys, time
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_PIP_LOG"], "a") as log:
    log.write(args[0] + "\\n")
def value(flag):
    return args[args.index(flag) + 1]
if args[0] == "download":
    time.sleep(float(os.environ.get("FAKE_PIP_DELAY", "0")))
    for line in Path(value("-r")).read_text().splitlines():
        pin = line.split()[0] if line.strip() and not line.startswith("#") else ""
        if pin:
            name, version = pin.split("==")
            wheel = Path(value("--dest")) / f"{{name.replace('-', '_')}}-{{version}}-py3-none-any.whl"
            wheel.write_bytes(pin.encode())
elif args[0] == "wheel":
    folder = Path(value("--wheel-dir"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hf_loader-0.1.0-py3-none-any.whl").write_bytes(b"hf_loader")
"""


def pin(name: str, version: str) -> str:
    """A pin with the hash of the stand-in pip's wheel for it, as hash-lock.py would write it."""
    import hashlib

    return f"{name}=={version} --hash=sha256:{hashlib.sha256(f'{name}=={version}'.encode()).hexdigest()}"


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine folder for the light builds, a small production lock, the stand-in pip; returns the pip's log."""
    source = tmp_path / "loader-prod.txt"
    source.write_text(f"# production\n{pin('pyyaml', '6.0.2')}\n{pin('composer', '0.32.1')}\n{pin('torch', '2.9.1')}\n")
    pip = tmp_path / "pip"
    pip.write_text(FAKE_PIP.format(python=sys.executable))
    pip.chmod(0o755)
    calls = tmp_path / "pip-calls.log"
    calls.touch()
    monkeypatch.setattr(stack, "LIGHT_SOURCE", source)
    monkeypatch.setenv("PIP", str(pip))
    monkeypatch.setenv("FAKE_PIP_LOG", str(calls))
    monkeypatch.setenv("LIGHT_WHEELHOUSE_DIR", str(tmp_path / "machine" / "light-wheelhouse"))
    return calls


def wheels(work: Path) -> dict[str, tuple[int, int]]:
    return {
        wheel.name: (wheel.stat().st_ino, wheel.stat().st_mtime_ns)
        for wheel in (work / "wheelhouse" / "cp311").glob("*.whl")
    }


def test_the_second_lab_downloads_nothing_and_gets_the_same_wheels(machine, tmp_path):
    first, second = tmp_path / "lab-a", tmp_path / "lab-b"
    extra = stack.light_stack(first)
    assert extra == [
        f"hf_loader_lock_file={first / 'loader-light.txt'}",
        f"hf_loader_wheelhouse_dir={first / 'wheelhouse'}",
    ]
    lock = (first / "loader-light.txt").read_text()
    assert "composer" not in lock and "torch==2.9.1" not in lock
    assert "torch==2.13.0 --hash=sha256:" in lock  # hash-lock.py ran on the CPU torch
    # hash-lock.py's download, the light wheels' download, the package wheel
    assert machine.read_text().split() == ["download", "download", "wheel"]
    built = wheels(first)
    assert set(built) == {
        "pyyaml-6.0.2-py3-none-any.whl",
        "torch-2.13.0-py3-none-any.whl",
        "hf_loader-0.1.0-py3-none-any.whl",
    }

    machine.write_text("")
    stack.light_stack(second)
    stack.light_stack(first)
    assert machine.read_text().split() == ["wheel", "wheel"], "a second light_stack downloaded again"
    assert (second / "loader-light.txt").read_text() == lock
    third_party = {name: ino for name, ino in built.items() if not name.startswith("hf_loader-")}
    assert {name: wheels(second)[name] for name in third_party} == third_party  # the same files (links)
    assert wheels(first) == built  # a lab's own wheelhouse is left as it was: nothing for rsync to resend


def test_a_new_production_lock_makes_a_new_build_and_the_old_one_goes(machine, tmp_path):
    root = stack.light_wheelhouse_root()
    stack.light_stack(tmp_path / "lab")
    old = stack.light_key()
    stack.LIGHT_SOURCE.write_text(f"{pin('pyyaml', '6.0.3')}\n")
    machine.write_text("")
    stack.light_stack(tmp_path / "lab")
    assert machine.read_text().split() == ["download", "download", "wheel"]
    assert sorted(entry.name for entry in root.iterdir()) == [".lock", stack.light_key()] != [".lock", old]
    assert "pyyaml-6.0.2-py3-none-any.whl" not in wheels(tmp_path / "lab")
    assert "pyyaml==6.0.3" in (tmp_path / "lab" / "loader-light.txt").read_text()


def test_two_labs_at_once_both_get_the_stack_from_one_build(machine, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_PIP_DELAY", "0.5")  # the first build is still running when the second lab asks
    errors: list[BaseException] = []

    def lab(name: str) -> None:
        try:
            stack.light_stack(tmp_path / name)
        except BaseException as error:  # reported below, from the test's thread
            errors.append(error)

    threads = [threading.Thread(target=lab, args=(name,)) for name in ("lab-a", "lab-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert machine.read_text().split().count("download") == 2  # one build: hash-lock.py's and the wheels'
    assert wheels(tmp_path / "lab-a").keys() == wheels(tmp_path / "lab-b").keys()
    assert len(wheels(tmp_path / "lab-a")) == 3


def test_the_default_machine_folder_is_beside_the_production_wheelhouse():
    assert stack.light_wheelhouse_root({}) == Path("/var/cache/gpu-fleet/light-wheelhouse")
    assert stack.light_wheelhouse_root({"WHEELHOUSE_DIR": "/srv/wh"}) == Path("/srv/light-wheelhouse")
    assert stack.light_wheelhouse_root({"LIGHT_WHEELHOUSE_DIR": "/srv/light", "WHEELHOUSE_DIR": "/srv/wh"}) == Path(
        "/srv/light"
    )


def test_an_unwritable_machine_folder_names_the_remedy(machine, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.touch()
    monkeypatch.setenv("LIGHT_WHEELHOUSE_DIR", str(blocker / "light"))
    with pytest.raises(stack.LightStackError, match="LIGHT_WHEELHOUSE_DIR"):
        stack.light_stack(tmp_path / "lab")
    assert not (tmp_path / "lab").exists()
