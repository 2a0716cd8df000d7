"""What the package sources carry, read before anything changes (read-only).

The header packages (installed or available) and the driver's versions, from the host's own
sources or, for NVIDIA's repository, from a private apt state folder that apt's options point to
(nothing under /etc/apt or /var/lib/apt is written). Sections: '#headers' NAME present|missing,
'#key' the repository key used (NVIDIA's repository), '#versions' and '#fabric_manager' rows
'name | version | origin' (apt-cache madison; dnf repoquery in that shape), '#simulate' the
output of `apt-get install --simulate` of the driver packages under the role's pin with the host's
other sources beside NVIDIA's (what apt would really install: Ubuntu's transitional packages pull
in another branch), then '#simulate_rc' its exit status. package_index, fabric_manager and
signing_key read them.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.host_commands import Report, under_root

DNF_QUERY_FORMAT = "%{name} | %{epoch}:%{version}-%{release} | %{repoid}"
DEFAULT_PIN_FILE = "/etc/apt/preferences.d/nvidia-driver.pref"
# The exit statuses of the former shell probe, which plan.yml reports: the key could not be
# downloaded (3), NVIDIA's repository could not be read (4).
RC_KEY_DOWNLOAD = 3
RC_REPOSITORY_READ = 4


@dataclass
class SourcesQuery:
    """What to read. repo_url '' = the host's sources; key_url '' = `key` holds the key itself."""

    family: str
    prefix: str
    headers: list = field(default_factory=list)
    repo_url: str = ""
    key_url: str = ""
    key: str = ""
    fabric_manager: list = field(default_factory=list)
    # The driver packages apt installs, simulated under `pin` (the role's preferences file,
    # rendered) in place of the host's file at `pin_file`.
    simulate: list = field(default_factory=list)
    pin: str = ""
    pin_file: str = DEFAULT_PIN_FILE


@dataclass
class SourcesResult:
    report: str
    rc: int = 0
    stderr: str = ""


class _Probe:
    def __init__(self, run, query: SourcesQuery, tmp: Path, root: str):
        self.run, self.query, self.tmp, self.root = run, query, tmp, root
        self.report = Report()
        self.stderr: list[str] = []

    def out(self, argv) -> int:
        """Run; its stdout goes to the report, its stderr to the result's stderr."""
        rc, out, err = self.run(argv)
        self.report.add(out)
        self.stderr.append(err)
        return rc

    def quiet(self, argv) -> int:
        """Run; everything it prints goes to the result's stderr (apt-get update, downloads)."""
        rc, out, err = self.run(argv)
        self.stderr += [out, err]
        return rc

    def header_present(self, name: str) -> bool:
        if self.query.family == "apt":
            _, out, _ = self.run(["dpkg-query", "-W", "-f=${Status}\n", name])
            if any(line.endswith(" installed") for line in out.splitlines()):
                return True
            return self.run(["apt-cache", "show", name])[0] == 0
        if self.run(["rpm", "-q", name])[0] == 0:
            return True
        return bool(self.run(["dnf", "-q", "repoquery", name])[1].strip("\n"))

    def madison(self, apt_options, names) -> None:
        if names:
            self.out(["apt-cache", *apt_options, "madison", *names])

    def apt_versions(self, apt_options) -> None:
        self.report.section("versions")
        _, names, _ = self.run(["apt-cache", *apt_options, "pkgnames", self.query.prefix])
        self.madison(apt_options, names.split())
        self.report.section("fabric_manager")
        self.madison(apt_options, self.query.fabric_manager)

    def dnf_query(self, dnf_options, names) -> int:
        return self.out(
            ["dnf", *dnf_options, "repoquery", "--disable-modular-filtering", "--qf", DNF_QUERY_FORMAT, *names]
        )

    def simulate(self, apt_options=()) -> None:
        query = self.query
        if query.family != "apt" or not query.simulate:
            return
        pin_file = query.pin_file or DEFAULT_PIN_FILE
        prefs = self.tmp / "prefs"
        prefs.mkdir(parents=True, exist_ok=True)
        host_prefs = under_root(self.root, "/etc/apt/preferences.d")
        for path in sorted(host_prefs.glob("*")):
            if path.is_file() and f"/etc/apt/preferences.d/{path.name}" != pin_file:
                shutil.copy(path, prefs / path.name)
        (prefs / Path(pin_file).name).write_text(query.pin + "\n")
        self.report.section("simulate")
        # No cache file is written (empty pkgcache/srcpkgcache): the simulation changes nothing on the host.
        argv = ["apt-get", "-q", "-s", "--no-install-recommends", *apt_options]
        argv += ["-o", f"Dir::Etc::PreferencesParts={prefs}", "-o", "Debug::NoLocking=true"]
        argv += ["-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=", "install", *query.simulate]
        # apt's errors belong with its plan (the shell probe read it with 2>&1): stdout, then stderr.
        rc, out, err = self.run(argv)
        self.report.add(out)
        self.report.add(err)
        self.report.section("simulate_rc")
        self.report.add(f"{rc}\n")

    def host_sources(self) -> int:
        if self.query.family == "apt":
            self.apt_versions(())
            self.simulate()
        else:
            self.report.section("versions")
            self.dnf_query(["-q"], [f"{self.query.prefix}*"])
            self.report.section("fabric_manager")
            if self.query.fabric_manager:
                self.dnf_query(["-q"], self.query.fabric_manager)
        return 0

    def key(self) -> None:
        self.report.section("key")
        self.report.add((self.tmp / "key.asc").read_text(errors="replace"))

    def nvidia_apt(self) -> int:
        tmp, base = self.tmp, self.query.repo_url
        for folder in ("parts", "lists/partial", "cache/archives/partial"):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        private = ["-o", f"Dir::Etc::SourceList={tmp}/sources.list", "-o", f"Dir::Etc::SourceParts={tmp}/parts"]
        private += ["-o", f"Dir::State::Lists={tmp}/lists", "-o", f"Dir::Cache={tmp}/cache"]
        private += ["-o", "APT::Sandbox::User=root", "-o", "Debug::NoLocking=true"]
        if self.query.key_url:
            download = ["/usr/lib/apt/apt-helper", *private, "download-file", self.query.key_url, f"{tmp}/key.asc"]
            if self.quiet(download) != 0:
                return RC_KEY_DOWNLOAD
        entry = f"deb [signed-by={tmp}/key.asc] {base} /\n"
        (tmp / "sources.list").write_text(entry)
        if self.quiet(["apt-get", "-q", *private, "update"]) != 0:
            return RC_REPOSITORY_READ
        self.key()
        self.apt_versions(private)
        # The simulation needs the host's sources too (dkms, compilers, libraries come from the
        # distribution): their lists as the host has them, NVIDIA's as just read, and the host's
        # source files except any for NVIDIA's repository (two Signed-By for one URI break apt).
        every = tmp / "all"
        (every / "parts").mkdir(parents=True)
        (every / "lists" / "partial").mkdir(parents=True)
        for lists in (under_root(self.root, "/var/lib/apt/lists"), tmp / "lists"):
            for path in sorted(lists.glob("*_*")):
                if path.is_file():
                    shutil.copy2(path, every / "lists" / path.name)
        uri = base[:-1] if base.endswith("/") else base
        own = under_root(self.root, "/etc/apt/sources.list")
        kept = [
            line + "\n"
            for line in (own.read_text(errors="replace").splitlines() if own.is_file() else [])
            if uri not in line
        ]
        (every / "sources.list").write_text("".join(kept) + entry)
        for pattern in ("*.list", "*.sources"):
            for path in sorted(under_root(self.root, "/etc/apt/sources.list.d").glob(pattern)):
                if path.is_file() and uri not in path.read_text(errors="replace"):
                    shutil.copy(path, every / "parts" / path.name)
        everything = ["-o", f"Dir::Etc::SourceList={every}/sources.list", "-o", f"Dir::Etc::SourceParts={every}/parts"]
        everything += ["-o", f"Dir::State::Lists={every}/lists", "-o", f"Dir::Cache={tmp}/cache"]
        self.simulate([*everything, "-o", "APT::Sandbox::User=root"])
        return 0

    def nvidia_dnf(self) -> int:
        tmp = self.tmp
        if self.query.key_url and self.quiet(["curl", "-fsSL", "-o", f"{tmp}/key.asc", self.query.key_url]) != 0:
            return RC_KEY_DOWNLOAD
        private = ["-q", "--disablerepo=*", f"--repofrompath=nvidia-probe,{self.query.repo_url}"]
        private += ["--setopt=nvidia-probe.gpgcheck=1", f"--setopt=nvidia-probe.gpgkey=file://{tmp}/key.asc"]
        private += [f"--setopt=cachedir={tmp}/cache"]
        self.key()
        self.report.section("versions")
        if self.dnf_query(private, [f"{self.query.prefix}*"]) != 0:
            return RC_REPOSITORY_READ
        self.report.section("fabric_manager")
        if self.query.fabric_manager:
            self.dnf_query(private, self.query.fabric_manager)
        return 0


def sources_report(run, query: SourcesQuery, root: str = "/") -> SourcesResult:
    """Read the sources as the query says; `root` is where the host's /etc/apt and /var/lib/apt are read."""
    with tempfile.TemporaryDirectory(prefix="nvidia-sources-probe-") as folder:
        probe = _Probe(run, query, Path(folder), root)
        probe.report.section("headers")
        for name in query.headers:
            probe.report.add(f"{name} {'present' if probe.header_present(name) else 'missing'}\n")
        if not query.repo_url:
            rc = probe.host_sources()
        else:
            if not query.key_url:
                (Path(folder) / "key.asc").write_text(query.key if query.key.endswith("\n") else query.key + "\n")
            rc = probe.nvidia_apt() if query.family == "apt" else probe.nvidia_dnf()
        return SourcesResult(report=probe.report.text(), rc=rc, stderr="".join(probe.stderr))
