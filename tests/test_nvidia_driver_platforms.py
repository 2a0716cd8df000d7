"""nvidia_driver's per-platform vars: complete, consistent with the specs, pinnable."""

import fnmatch
import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "nvidia_driver"
ROLE_VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
SUPPORTED = ROLE_VARS["__nvidia_driver_supported"]
OPTIONS = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]

spec = importlib.util.spec_from_file_location("nvidia_driver_filters", ROLE / "filter_plugins" / "nvidia_driver.py")
nv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nv)


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
    assert nv.plan_errors(data, source, branch, "", modules, build, flavour) == []
    names = nv.package_names(data, source, branch, modules, build, flavour)
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
        errors = nv.plan_errors(
            platform(name),
            defaults["nvidia_driver_source"],
            defaults["nvidia_driver_branch"],
            defaults["nvidia_driver_version"],
            defaults["nvidia_driver_kernel_modules"],
            defaults["nvidia_driver_build"],
            defaults["nvidia_driver_flavour"],
        )
        assert errors == [], name


def test_precompiled_modules_only_where_offered():
    offered = {name for name, source, modules, build, flavour in ALL if build == "precompiled"}
    assert offered == {"Ubuntu-22", "Ubuntu-24"}


def test_distribution_branches_are_what_the_distributions_carry():
    assert platform("Debian-12")["sources"]["distribution"]["branches"] == ["535"]
    assert platform("Debian-13")["sources"]["distribution"]["branches"] == ["550"]
    assert "distribution" not in platform("RedHat-9")["sources"]


def test_specs_list_every_supported_platform_name():
    description = " ".join(OPTIONS["nvidia_driver_platform"]["description"])
    for name in SUPPORTED:
        assert f"C({name})" in description
