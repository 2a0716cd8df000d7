"""A flat, signed apt repository written by Python: .debs by dpkg-deb, indexes and Release here.

apt-ftparchive is not on the controller, so the Packages stanzas and the Release file are
written here, in the shape apt-ftparchive gives them (a flat repository: `deb URI /`,
Filename relative to the URI, hashes of every index in Release). gpg signs Release
(InRelease, clear-signed, and Release.gpg, detached), with a key of the lab's own in a
private GNUPGHOME.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from email.utils import formatdate
from pathlib import Path

# Control fields in the order dpkg writes them; anything else follows in its own order.
FIELD_ORDER = [
    "Package",
    "Version",
    "Architecture",
    "Maintainer",
    "Installed-Size",
    "Depends",
    "Conflicts",
    "Provides",
    "Section",
    "Priority",
    "Homepage",
]
# Release lists each index with these hashes (apt wants SHA256 at least; apt-ftparchive writes all four).
RELEASE_HASHES = [("MD5Sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256"), ("SHA512", "sha512")]
# Packages stanzas: the same four, spelled as apt-ftparchive spells them there.
PACKAGES_HASHES = [("MD5sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256"), ("SHA512", "sha512")]


def control_text(fields: dict[str, str]) -> str:
    """A deb822 stanza; Description may span lines (continuations get one leading space)."""
    ordered = [key for key in FIELD_ORDER if key in fields]
    ordered += [key for key in fields if key not in ordered and key != "Description"]
    if "Description" in fields:
        ordered.append("Description")
    lines = []
    for key in ordered:
        value = str(fields[key])
        first, *rest = value.split("\n")
        lines.append(f"{key}: {first}")
        lines += [" " + (line if line.strip() else ".") for line in rest]
    return "\n".join(lines) + "\n"


def parse_control(text: str) -> dict[str, str]:
    """One deb822 stanza back into fields (continuation lines joined with newlines)."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith((" ", "\t")) and key:
            fields[key] += "\n" + line[1:]
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def packages_stanza(control: dict[str, str], filename: str, data: bytes) -> str:
    """The Packages entry of one .deb: its control fields, then Filename, Size and hashes."""
    fields = dict(control)
    description = fields.pop("Description", None)
    fields["Filename"] = filename
    fields["Size"] = str(len(data))
    for field, algorithm in PACKAGES_HASHES:
        fields[field] = hashlib.new(algorithm, data).hexdigest()
    if description is not None:
        fields["Description"] = description
    return control_text(fields)


def release_text(indexes: dict[str, bytes], fields: dict[str, str], date: float | None = None) -> str:
    """A Release file over these index files (name -> contents), hashes and sizes of each."""
    head = dict(fields)
    head.setdefault("Date", formatdate(time.time() if date is None else date, usegmt=True))
    lines = [f"{key}: {value}" for key, value in head.items()]
    width = max(len(str(len(data))) for data in indexes.values())
    for field, algorithm in RELEASE_HASHES:
        lines.append(f"{field}:")
        for name, data in sorted(indexes.items()):
            lines.append(f" {hashlib.new(algorithm, data).hexdigest()} {len(data):>{width}} {name}")
    return "\n".join(lines) + "\n"


def build_deb(
    out_dir: Path,
    control: dict[str, str],
    files: dict[str, tuple[bytes, int]],
    scripts: dict[str, str] | None = None,
) -> Path:
    """Build NAME_VERSION_ARCH.deb with dpkg-deb from control fields, files (path -> (bytes, mode))
    and maintainer scripts (postinst, postrm, ...). Owner root:root (--root-owner-group)."""
    name = f"{control['Package']}_{control['Version'].split(':')[-1]}_{control['Architecture']}.deb"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pkg"
        (root / "DEBIAN").mkdir(parents=True)
        for path, (data, mode) in files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(mode)
        size_kib = sum((len(data) + 1023) // 1024 for data, _ in files.values())
        fields = dict(control)
        fields.setdefault("Installed-Size", str(max(size_kib, 1)))
        (root / "DEBIAN" / "control").write_text(control_text(fields))
        for script, text in (scripts or {}).items():
            path = root / "DEBIAN" / script
            path.write_text(text)
            path.chmod(0o755)
        for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            directory.chmod(0o755)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / name
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(target)],
            check=True,
            capture_output=True,
            text=True,
        )
    return target


def deb_control(deb: Path) -> dict[str, str]:
    """The control fields of a built .deb, as dpkg-deb reads them back."""
    out = subprocess.run(["dpkg-deb", "--field", str(deb)], check=True, capture_output=True, text=True).stdout
    return parse_control(out)


def write_indexes(repo: Path, debs: Iterable[Path], release_fields: dict[str, str]) -> dict[str, bytes]:
    """Packages, Packages.gz and Release of a flat repository holding these .debs (in repo)."""
    stanzas = []
    for deb in sorted(debs, key=lambda path: path.name):
        stanzas.append(packages_stanza(deb_control(deb), f"./{deb.name}", deb.read_bytes()))
    packages = "\n".join(stanzas).encode()
    # mtime 0: the same packages give the same Packages.gz (and Release hashes).
    packages_gz = gzip.compress(packages, compresslevel=9, mtime=0)
    indexes = {"Packages": packages, "Packages.gz": packages_gz}
    for name, data in indexes.items():
        (repo / name).write_bytes(data)
    (repo / "Release").write_text(release_text(indexes, release_fields))
    return indexes


def gpg(gnupghome: Path, *args: str, input: str | None = None) -> str:
    env = dict(os.environ, GNUPGHOME=str(gnupghome))
    proc = subprocess.run(
        ["gpg", "--batch", "--quiet", "--no-tty", *args], env=env, capture_output=True, text=True, input=input
    )
    if proc.returncode != 0:
        raise RuntimeError(f"gpg {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def ensure_key(gnupghome: Path, uid: str) -> str:
    """A signing key in a private GNUPGHOME (made once); its armored public key."""
    gnupghome.mkdir(parents=True, exist_ok=True)
    gnupghome.chmod(0o700)
    if not gpg(gnupghome, "--list-secret-keys", "--with-colons").strip():
        gpg(gnupghome, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
    return gpg(gnupghome, "--armor", "--export")


def sign_release(gnupghome: Path, repo: Path) -> None:
    """InRelease (clear-signed) and Release.gpg (detached, armored) next to Release."""
    for name in ("InRelease", "Release.gpg"):
        (repo / name).unlink(missing_ok=True)
    gpg(gnupghome, "--yes", "--clearsign", "--output", str(repo / "InRelease"), str(repo / "Release"))
    gpg(gnupghome, "--yes", "--armor", "--detach-sign", "--output", str(repo / "Release.gpg"), str(repo / "Release"))


def stop_agent(gnupghome: Path) -> None:
    """gpg leaves an agent running for its home: stop it, so that nothing outlives the build."""
    if shutil.which("gpgconf"):
        env = dict(os.environ, GNUPGHOME=str(gnupghome))
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, check=False)
