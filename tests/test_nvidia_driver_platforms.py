"""nvidia_driver's per-platform vars: complete, consistent with the specs, pinnable."""

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.packages import package_names, plan_errors
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import version_tuple

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "nvidia_driver"
ROLE_VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
SUPPORTED = ROLE_VARS["__nvidia_driver_supported"]
OPTIONS = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]


def platform(name):
    return yaml.safe_load((ROLE / "vars" / f"{name}.yml").read_text())["__nvidia_driver_platform_data"]


def combinations(name):
    data = platform(name)
    for source, offer in data["sources"].items():
        for modules, builds in offer["packages"].items():
            for build, flavours in builds.items():
                for flavour in flavours:
                    yield data, source, modules, build, flavour


ALL = [(name, *combo[1:]) for name in SUPPORTED for combo in combinations(name)]


def test_every_supported_platform_has_a_vars_file_and_no_file_is_unlisted():
    files = {path.stem for path in (ROLE / "vars").glob("*.yml")} - {"main"}
    assert files == set(SUPPORTED)


@pytest.mark.parametrize("name", SUPPORTED)
def test_platform_data_is_complete(name):
    data = platform(name)
    for key in [
        "name",
        "family",
        "repo_dist",
        "repo_key_name",
        "initramfs_command",
        "fabric_manager_service",
        "persistence_service",
        "sources",
    ]:
        assert data.get(key), f"{name}: {key}"
    assert data["family"] in ("apt", "dnf")
    assert "cuda" in data["sources"], "every platform offers NVIDIA's repository"
    assert data["sources"]["cuda"]["fabric_manager"], "NVIDIA's repository carries the fabric manager"
    if data["family"] == "dnf":
        assert set(data["module_stream"]) == {"open", "proprietary"}
    assert data["initramfs_command"][0] in ("update-initramfs", "dracut")


@pytest.mark.parametrize(("name", "source", "modules", "build", "flavour"), ALL)
def test_every_offered_combination_gives_packages(name, source, modules, build, flavour):
    data = platform(name)
    branch = (data["sources"][source].get("branches") or ["580"])[-1]
    assert source in OPTIONS["nvidia_driver_source"]["choices"]
    assert modules in OPTIONS["nvidia_driver_kernel_modules"]["choices"]
    assert build in OPTIONS["nvidia_driver_build"]["choices"]
    assert flavour in OPTIONS["nvidia_driver_flavour"]["choices"]
    assert plan_errors(data, source, branch, "", modules, build, flavour) == []
    names = package_names(data, source, branch, modules, build, flavour, ["6.8.0-45-generic"])
    assert names and all("{" not in package for package in names)
    if data["family"] == "apt":
        # the preferences file must hold every driver package at the branch or pin
        unpinned = [
            package
            for package in names
            if not package.startswith("linux-modules-")  # versioned like the kernel, built for one driver
            and not any(fnmatch.fnmatch(package, pattern) for pattern in ROLE_VARS["__nvidia_driver_apt_pinned"])
        ]
        assert unpinned == []


def test_defaults_install_on_every_platform():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    for name in SUPPORTED:
        errors = plan_errors(
            platform(name),
            defaults["nvidia_driver_source"],
            defaults["nvidia_driver_branch"],
            defaults["nvidia_driver_version"],
            defaults["nvidia_driver_kernel_modules"],
            defaults["nvidia_driver_build"],
            defaults["nvidia_driver_flavour"],
        )
        assert errors == [], name


def test_precompiled_modules_only_where_the_specs_say_they_are_offered():
    """The spec of nvidia_driver_build names whose archive has precompiled modules; the vars must
    offer them there (its distribution source), and nowhere else."""
    description = OPTIONS["nvidia_driver_build"]["description"]
    description = description if isinstance(description, str) else " ".join(description)
    (distributor,) = re.findall(r"where offered \((\w+)'s archive\)", description)
    offered = {(name, source) for name, source, modules, build, flavour in ALL if build == "precompiled"}
    expected = {(name, "distribution") for name in SUPPORTED if platform(name)["name"].split()[0] == distributor}
    assert expected and offered == expected


def archive_releases() -> list[dict[str, str]]:
    """The captured Debian archive listing per release, in its order (bookworm, then trixie):
    package name -> version. A release's stanzas end where a name comes again."""
    releases: list[dict[str, str]] = [{}]
    listing = "\n".join(line for line in ARCHIVE_LISTING.read_text().splitlines() if not line.startswith("#"))
    for stanza in listing.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines())
        if fields["Package"] in releases[-1]:
            releases.append({})
        releases[-1][fields["Package"]] = fields["Version"]
    return releases


@pytest.mark.parametrize(("name", "release"), [("Debian-12", 0), ("Debian-13", 1)])
def test_distribution_branches_are_what_the_debian_archive_carries(name, release):
    """Against Debian's archive as captured (bookworm, trixie): every package the vars take from
    the distribution is there, and the branch the vars name is the one it is built at."""
    carried = archive_releases()[release]
    offer = platform(name)["sources"]["distribution"]
    wanted = {p for builds in offer["packages"].values() for fl in builds.values() for ps in fl.values() for p in ps}
    assert {p for p in wanted if p not in carried} == set(), f"{name}: not in the archive"
    driver_branches = {carried[p].split(".")[0] for p in wanted if not p.startswith("nvidia-persistenced")}
    assert offer["branches"] == sorted(driver_branches)


def test_the_archive_listing_holds_two_releases_of_one_branch_each():
    bookworm, trixie = archive_releases()
    assert len(bookworm) > 20 and len(trixie) > 20


def test_rhel_has_no_distribution_driver():
    # RHEL's own repositories carry no NVIDIA driver (NVIDIA's installation guide installs it from
    # the CUDA repository only): the vars offer no distribution source there.
    assert [
        name for name in SUPPORTED if name.startswith("RedHat") and "distribution" in platform(name)["sources"]
    ] == []


def test_specs_list_every_supported_platform_name():
    description = " ".join(OPTIONS["nvidia_driver_platform"]["description"])
    for name in SUPPORTED:
        assert f"C({name})" in description


@pytest.mark.parametrize("name", ["Ubuntu-22", "Ubuntu-24"])
def test_ubuntu_turns_persistence_mode_on_with_a_drop_in(name):
    # Ubuntu's nvidia-persistenced.service runs `--no-persistence-mode` and is started by udev
    # (canonical/nvidia-graphics-drivers): enabling it changes nothing, a drop-in does.
    data = platform(name)
    assert data["persistence_dropin"].startswith("/etc/systemd/system/nvidia-persistenced.service.d/")
    assert data["persistence_enable"] is False
    dropin = (ROLE / "templates" / "nvidia-persistenced-persistence-mode.conf.j2").read_text()
    assert "ExecStart=\nExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --persistence-mode" in dropin
    assert "--no-persistence-mode" not in dropin.split("[Service]", 1)[1]


# NVIDIA signs debian13 with a new key (NVIDIA/cuda-repo-management README "GPG keys", issue #39);
# the older repositories keep 3bf863cc (RPM: D42D0685). A platform added to the role fails here, by
# name, until its repository's key is written down.
REPOSITORY_KEYS = {
    "Debian-12": "3bf863cc.pub",
    "Debian-13": "8793F200.pub",
    "Ubuntu-22": "3bf863cc.pub",
    "Ubuntu-24": "3bf863cc.pub",
    "RedHat-8": "D42D0685.pub",
    "RedHat-9": "D42D0685.pub",
}


@pytest.mark.parametrize("name", SUPPORTED)
def test_each_platform_uses_its_repositorys_key(name):
    assert platform(name)["repo_key_name"] == REPOSITORY_KEYS[name]


def test_every_documented_tag_is_a_tag_of_the_role_and_back():
    readme = (ROLE / "README.md").read_text()
    documented = set(re.findall(r"`(nvidia_driver\w*)`", readme.split("\nTags: ", 1)[1].split("\n\n", 1)[0]))
    used = set()
    for tasks in ("main.yml", "gpu.yml"):
        for task in yaml.safe_load((ROLE / "tasks" / tasks).read_text()):
            used.update(task.get("tags", []))
            include = task.get("ansible.builtin.include_tasks")
            used.update(((include if isinstance(include, dict) else {}).get("apply") or {}).get("tags", []))
    assert documented == used


# NVIDIA driver installation guide, "Recent Updates", table "Ubuntu 590 package renames": the
# names the driver packages keep from 590 on (and those that keep theirs). The apt preferences
# file must hold every one of them, or apt moves them to another branch on its own.
UBUNTU_590_NAMES = [
    "cuda-drivers",
    "libnvidia-cfg1",
    "libnvidia-common",
    "libnvidia-compute",
    "libnvidia-decode",
    "libnvidia-encode",
    "libnvidia-extra",
    "libnvidia-fbc1",
    "libnvidia-gl",
    "libnvidia-gpucomp",
    "libnvidia-nscq",
    "libnvsdm",
    "libxnvctrl0",
    "libxnvctrl-dev",
    "nvidia-dkms",
    "nvidia-dkms-open",
]
# NVIDIA/gpu-driver-container ubuntu24.04/install.sh holds these at the driver's version too.
FABRIC_NAMES = ["nvidia-fabricmanager", "nvidia-fabricmanager-dev", "nvidia-imex", "nvidia-modprobe"]


@pytest.mark.parametrize("name", UBUNTU_590_NAMES + FABRIC_NAMES)
def test_the_apt_pin_holds_every_driver_package_also_without_the_branch(name):
    assert any(fnmatch.fnmatch(name, pattern) for pattern in ROLE_VARS["__nvidia_driver_apt_pinned"]), name


@pytest.mark.parametrize("name", ["Ubuntu-22", "Ubuntu-24"])
def test_ubuntu_precompiled_modules_follow_the_running_kernel(name):
    data = platform(name)
    for modules in ("open", "proprietary"):
        for flavour, templates in data["sources"]["distribution"]["packages"][modules]["precompiled"].items():
            modules_packages = [template for template in templates if template.startswith("linux-modules-")]
            assert modules_packages and all(template.endswith("-{kernel}") for template in modules_packages), flavour


MIRROR_TABLE = ROOT / "molecule" / "nvidia_driver" / "files" / "mirror-packages.tsv"


def mirror_rows():
    rows = {}
    for line in MIRROR_TABLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, first, last, depends, source = line.split("\t")
            rows[name] = (int(first), int(last), depends, source)
    return rows


def test_stand_in_mirror_rows_are_sourced_and_consistent():
    rows = mirror_rows()
    for name, (first, last, depends, source) in rows.items():
        assert first <= last and source.strip(), name
        for dependency in re.findall(r"([a-z0-9.+-]+) \(= \{v\}\)", depends):
            assert dependency in rows, f"{name} depends on {dependency}, which the table lacks"


@pytest.mark.parametrize("name", [n for n in SUPPORTED if n.startswith("Debian")])
def test_stand_in_mirror_carries_every_package_the_role_takes_from_nvidias_debian_repository(name):
    """The Molecule mirror stands in for NVIDIA's Debian repository: every name the role
    installs from it (driver sets and fabric manager names per branch) must be a row."""
    offer = platform(name)["sources"]["cuda"]
    wanted = {p for builds in offer["packages"].values() for fl in builds.values() for ps in fl.values() for p in ps}
    wanted |= {p for ps in offer["fabric_manager"]["packages"].values() for p in ps}
    assert wanted <= set(mirror_rows())


ARCHIVE_LISTING = ROOT / "tests" / "fixtures" / "nvidia" / "captured_debian12-13_archive_driver_packages.txt"


def apt_candidates(settings: dict, listing: str) -> dict[str, str]:
    """Real apt ranks the listing's versions under the preferences: name -> candidate version.

    `settings` is the private_apt_state fixture's private apt state over a flat file repository
    holding `listing`: nothing of the machine's own apt configuration, lists or status is read or
    written.
    """
    options = []
    for key, value in settings.items():
        options += ["-o", f"{key}={value}"]
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    subprocess.run(["apt-get", "-q", *options, "update"], check=True, capture_output=True, env=env)
    names = sorted(set(re.findall(r"^Package: (\S+)$", listing, re.M)))
    policy = subprocess.run(
        ["apt-cache", *options, "policy", *names], check=True, capture_output=True, text=True, env=env
    )
    return dict(re.findall(r"^(\S+):\n\s+Installed: \S+\n\s+Candidate: (\S+)$", policy.stdout, re.M))


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt (make test-tools installs the host tools)")
@pytest.mark.parametrize(("branch", "pin"), [("535", ""), ("535", "535.261.03")])
def test_the_apt_pin_holds_every_package_built_from_the_driver_when_a_newer_branch_appears(
    private_apt_state, rendered_preferences, branch, pin
):
    """Item 4 of issue 29: Debian 12's driver (535) beside Debian 13's (550), as a host sees a newer
    branch appear. Every package of bookworm's driver sources must stay at 535 under the role's pin;
    by binary names alone the GL/EGL libraries (libglx-nvidia0, libegl-nvidia0, libgles-nvidia1/2,
    libgl1-nvidia-glvnd-glx, ...) took 550 and broke the desktop flavour."""
    listing = "\n".join(line for line in ARCHIVE_LISTING.read_text().splitlines() if not line.startswith("#"))
    stanzas = [dict(line.split(": ", 1) for line in stanza.splitlines()) for stanza in listing.strip().split("\n\n")]
    bookworm = {s["Package"]: s["Version"] for s in stanzas if s["Version"].startswith(branch + ".")}
    newer = {s["Package"] for s in stanzas if version_tuple(s["Version"])[0] > int(branch)}
    assert {"libglx-nvidia0", "libegl-nvidia0", "libgl1-nvidia-glvnd-glx"} <= set(
        bookworm
    ) & newer  # the listing shows it
    settings = private_apt_state(listing + "\n", rendered_preferences(branch, pin))
    candidates = apt_candidates(settings, listing + "\n")

    def held(name, version):
        candidate = candidates.get(name, "0.0")
        if pin and version.startswith(pin):
            return version_tuple(candidate) == version_tuple(version)
        return version_tuple(candidate)[0] == int(branch)

    escaped = {
        name: candidates.get(name) for name, version in bookworm.items() if name in newer and not held(name, version)
    }
    assert escaped == {}, f"apt would take these from another branch: {escaped}"
