#!/usr/bin/env python3
"""Write `--hash=sha256:` onto every pin of a lock that hosts install from.

    python3 scripts/hash-lock.py requirements/pull.txt requirements/loader-prod.txt
    make lock-hashes                      # the same for both host locks

Hosts install these locks with `pip install --require-hashes --only-binary :all:`, so
that whoever serves the wheels (a plain-HTTP wheelhouse, a mirror, the path between)
cannot hand a host their own build: pip refuses any file whose sha256 is not in the lock.

The hashes are those of the wheels that scripts/build-wheelhouse.sh downloads, with the
same pip and the same Python, ABI and manylinux flags, for every target Python (default
3.11 and 3.13, as the wheelhouse): a binary package gets one hash per Python, a pure
wheel one. The wheels are downloaded afresh into a temporary folder, never taken from a
wheelhouse that hosts are served from (pip would reuse a file there unchecked). Comments and the order of the
lock are kept; a pin's old hashes are replaced. Exit 2 names a pin that got no wheel.

--add-missing hashes only the pins that have none and keeps the others as they are: a
lock derived from a hashed one (the lab's light stack swaps torch for its CPU build)
keeps the hashes it was given, and pip checks them when that lock is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_WHEELHOUSE = ROOT / "scripts" / "build-wheelhouse.sh"
DEFAULT_PYTHONS = ("3.11", "3.13")
# A pin as the locks write it: name==version, then options (hashes) on the same line.
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;#]+)(?P<rest>.*)$")
# name-version(-build)?-python-abi-platform.whl (PEP 427); the name has "_" for "-".
WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


class LockError(Exception):
    """A lock that cannot be hashed, with what to change."""


def canonical(name: str) -> str:
    """PEP 503: 'PyYAML' and 'ruamel.yaml' -> 'pyyaml', 'ruamel-yaml'."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Pin:
    name: str
    version: str
    hashes: set[str] = field(default_factory=set)


def parse(text: str) -> list[str | Pin]:
    """The lock as lines: comments and blanks as text, pins as Pin with the hashes they carry."""
    lines: list[str | Pin] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            lines.append(line)
            continue
        match = PIN.match(stripped)
        if not match or stripped.endswith("\\"):
            raise LockError(
                f"line {number} ({stripped!r}) is not a name==version pin on one line: "
                "a host lock holds exact pins only, each with its hashes on the same line"
            )
        rest = match["rest"].split()
        unknown = [option for option in rest if not option.startswith("--hash=sha256:")]
        if unknown:
            raise LockError(f"line {number}: {' '.join(unknown)} is not a --hash=sha256: option; remove it")
        lines.append(Pin(match["name"], match["version"], {option.split(":", 1)[1] for option in rest}))
    return lines


def render(lines: list[str | Pin]) -> str:
    out = []
    for line in lines:
        if isinstance(line, Pin):
            hashes = " ".join(f"--hash=sha256:{digest}" for digest in sorted(line.hashes))
            out.append(f"{line.name}=={line.version} {hashes}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as wheel:
        for block in iter(lambda: wheel.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(pins: list[Pin], pythons: list[str], wheelhouse: Path) -> None:
    """build-wheelhouse.sh's download (its flags, its pip) of the plain pins, per Python."""
    plain = wheelhouse / "plain-pins.txt"
    plain.write_text("".join(f"{pin.name}=={pin.version}\n" for pin in pins))
    env = dict(
        os.environ,
        WHEELHOUSE_DIR=str(wheelhouse),
        WHEELHOUSE_LOCK=str(plain),
        WHEELHOUSE_PYTHONS=" ".join(pythons),
        WHEELHOUSE_PACKAGE="no",
        # Only here: the pins are plain because their hashes are what this makes.
        WHEELHOUSE_UNHASHED_LOCK="yes",
    )
    subprocess.run(["bash", str(BUILD_WHEELHOUSE)], cwd=ROOT, env=env, check=True)


def hash_wheels(pins: list[Pin], pythons: list[str], wheelhouse: Path) -> None:
    """Each pin gets the sha256 of its wheels in every Python's folder."""
    by_name = {canonical(pin.name): pin for pin in pins}
    for python in pythons:
        folder = wheelhouse / f"cp{python.replace('.', '')}"
        found = set()
        for wheel in sorted(folder.glob("*.whl")):
            match = WHEEL.match(wheel.name)
            pin = by_name.get(canonical(match["name"])) if match else None
            if pin is None:
                continue
            version = match["version"]
            if "+" not in pin.version:
                version = version.split("+", 1)[0]  # ==2.13.0 takes 2.13.0+cpu, as pip does (PEP 440)
            if canonical(version) != canonical(pin.version):
                continue
            pin.hashes.add(sha256(wheel))
            found.add(canonical(pin.name))
        missing = sorted(set(by_name) - found)
        if missing:
            raise LockError(
                f"no wheel for Python {python} of {', '.join(missing)} in {folder}: hosts install binaries only "
                "(--only-binary :all:); pin a version that has a wheel for every target Python"
            )


def hash_lock(lock: Path, pythons: list[str], add_missing: bool = False) -> str:
    lines = parse(lock.read_text())
    pins = [line for line in lines if isinstance(line, Pin)]
    if not pins:
        raise LockError(f"{lock} holds no name==version pin")
    if add_missing:
        pins = [pin for pin in pins if not pin.hashes]
        if not pins:
            return render(lines)
    for pin in pins:
        pin.hashes = set()
    with tempfile.TemporaryDirectory(prefix="hash-lock-") as scratch:
        folder = Path(scratch)
        download(pins, pythons, folder)
        hash_wheels(pins, pythons, folder)
    return render(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("locks", nargs="+", type=Path, help="locks to rewrite in place")
    parser.add_argument(
        "--python", action="append", dest="pythons", help="target Python (repeat; default: 3.11 and 3.13)"
    )
    parser.add_argument("--add-missing", action="store_true", help="hash only the pins without a hash")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a lock is not as generated")
    args = parser.parse_args(argv)
    pythons = args.pythons or list(DEFAULT_PYTHONS)
    stale = []
    for lock in args.locks:
        try:
            text = hash_lock(lock, pythons, args.add_missing)
        except LockError as error:
            print(f"hash-lock: {lock}: {error}", file=sys.stderr)
            return 2
        if text == lock.read_text():
            print(f"hash-lock: {lock}: up to date")
        elif args.check:
            stale.append(lock)
            print(f"hash-lock: {lock}: hashes differ from the wheels; run python3 scripts/hash-lock.py {lock}")
        else:
            lock.write_text(text)
            print(f"hash-lock: {lock}: hashes written")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
