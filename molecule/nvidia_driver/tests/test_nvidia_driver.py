"""Verify nvidia_driver on containers without a GPU: the no-GPU path for real.

bookworm converges with the defaults (branch 580, open modules, headless),
trixie with an exact pin below the newest of the branch (580.82.07),
proprietary modules and the desktop flavour. The mirror built in prepare
carries 570, two 580 releases and 590, signed with a key made there.
"""

import json
from pathlib import Path

import pytest
from verify_helpers import (
    bad_variables_test,
    changes_nothing,
    check_mode_changes_nothing,
    debian_kernel,
    every_tag_check_mode_test,
    file_checksums,
    host_runner,
    is_trixie,
)

testinfra_hosts = ["ansible://all"]

SCENARIO = Path(__file__).resolve().parents[1]
run_converge = host_runner(SCENARIO / "converge.yml")
run_defaults = host_runner(SCENARIO / "defaults.yml")
SOURCES = "/etc/apt/sources.list.d/nvidia-cuda.sources"
KEYRING = "/etc/apt/keyrings/nvidia-cuda.asc"
PREFERENCES = "/etc/apt/preferences.d/nvidia-driver.pref"
BLACKLIST = "/etc/modprobe.d/nvidia-blacklist-nouveau.conf"
FACTS = "/etc/ansible/facts.d/nvidia_driver.fact"
MANAGED_FILES = [SOURCES, KEYRING, PREFERENCES, BLACKLIST, FACTS]


def expected(host):
    if is_trixie(host):
        return {
            "version": "580.82.07-1",
            "platform": "debian13",
            "packages": ["nvidia-driver", "nvidia-kernel-dkms", "nvidia-persistenced"],
            "modules": "proprietary",
        }
    return {
        "version": "580.95.05-1",
        "platform": "debian12",
        "packages": ["nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-persistenced"],
        "modules": "open",
    }


def checksums(host):
    return file_checksums(host, MANAGED_FILES)


def report(host):
    return json.loads(host.file(FACTS).content_string)


def test_sources_file_is_deb822_with_signed_by(host):
    content = host.file(SOURCES).content_string
    fields = dict(line.split(": ", 1) for line in content.splitlines() if ": " in line and not line.startswith("#"))
    assert fields == {
        "Types": "deb",
        "URIs": f"file:///srv/nvidia-mirror/{expected(host)['platform']}/x86_64/",
        "Suites": "/",
        "Signed-By": KEYRING,
    }


def test_key_is_the_mirror_key(host):
    key = host.file(KEYRING)
    assert key.mode == 0o644 and key.user == "root"
    assert key.content_string.strip() == host.file("/srv/nvidia-mirror/test-key.asc").content_string.strip()


def test_apt_trusts_the_mirror_through_signed_by_only(host):
    # The signature is checked against the keyring named in the sources file:
    # a refresh succeeds without warnings, and the mirror's packages are candidates.
    update = host.run("LC_ALL=C apt-get update -o APT::Update::Error-Mode=any")
    assert update.rc == 0, update.stderr
    assert "NO_PUBKEY" not in update.stdout + update.stderr
    assert "not signed" not in update.stdout + update.stderr
    policy = host.check_output("LC_ALL=C apt-cache policy nvidia-driver-cuda")
    assert f"Candidate: {expected(host)['version']}" in policy
    assert "590.44.01-1" in policy  # the newer branch is there, and not chosen


def test_preferences_hold_the_branch_or_pin(host):
    content = host.file(PREFERENCES).content_string
    if is_trixie(host):
        assert "Pin: version 580.82.07-*" in content
    else:
        assert "Pin: version 580.*" in content
    assert "Pin-Priority: 1001" in content


def test_package_set_is_resolved_at_the_pinned_version(host):
    facts = report(host)
    versions = {package["name"]: package["version"] for package in facts["package_set"]}
    for name in expected(host)["packages"]:
        assert versions[name] == expected(host)["version"], name
    nvidia = {name: version for name, version in versions.items() if name.startswith(("nvidia-", "libcuda"))}
    assert set(nvidia.values()) == {expected(host)["version"]}
    assert "dkms" in versions  # from Debian's archive, beside the mirror
    assert facts["packages"] == expected(host)["packages"]
    assert facts["kernel_modules"] == expected(host)["modules"]


def test_nothing_is_installed_without_a_gpu(host):
    for name in expected(host)["packages"] + ["dkms", "nvidia-kernel-support"]:
        assert not host.package(name).is_installed, name


def test_report_says_no_gpu_no_reboot_not_verified(host):
    facts = report(host)
    assert facts["gpu_count"] == 0
    assert facts["nvswitch_count"] == 0
    assert facts["action"] == "resolve"
    assert facts["reboot_required"] is False
    assert facts["verified"] is False
    assert facts["nouveau_loaded"] is False
    assert facts["fabric_manager"] == ""
    assert facts["driver_version"] == ""


def test_nouveau_is_blacklisted_for_modprobe(host):
    assert host.file(BLACKLIST).mode == 0o644
    config = host.check_output("modprobe --showconfig")
    assert "blacklist nouveau" in config
    assert "options nouveau modeset=0" in config


def test_no_gpu_message_once_and_idempotent_rerun(host):
    rc, output = run_converge(host)
    assert rc == 0, output
    assert output.count("No NVIDIA GPU on") == 1
    assert "changed=0" in output


def test_local_fact_is_read_by_later_plays(host):
    facts = host.ansible("setup", "filter=ansible_local")["ansible_facts"]["ansible_local"]
    assert facts["nvidia_driver"]["branch"] == "580"


def test_check_mode_changes_nothing_and_shows_the_new_pin(host):
    output = check_mode_changes_nothing(host, run_converge, checksums, "-e", "nvidia_driver_version=580.95.05")
    assert "580.95.05-*" in output  # the diff of the preferences file


def test_initramfs_is_rebuilt_when_the_blacklist_changes(host):
    rc, output = run_converge(host, "-e", "nvidia_driver_blacklist_nouveau=false")
    assert rc == 0, output
    assert "RUNNING HANDLER [nvidia_driver : Rebuild the initramfs]" in output
    assert not host.file(BLACKLIST).exists
    rc, output = run_converge(host)
    assert rc == 0, output
    assert "RUNNING HANDLER [nvidia_driver : Rebuild the initramfs]" in output
    assert host.file(BLACKLIST).exists


def test_no_gpu_action_skip_touches_nothing_more(host):
    output = changes_nothing(host, run_converge, checksums, "-e", "nvidia_driver_no_gpu_action=skip")
    assert "nvidia_driver_no_gpu_action=skip" in output


def test_the_defaults_change_nothing_on_a_host_without_a_gpu(host):
    # Item 11 of issue 11: a CPU host in the GPU group gets no source, pin, blacklist, initramfs
    # rebuild or fact, and the role reads no package source there.
    output = changes_nothing(host, run_defaults, checksums)
    assert "(nvidia_driver_no_gpu_action=skip)" in output
    assert "Read what the package sources carry" not in output


def test_headers_of_the_kernel_to_build_for_are_in_the_package_set(host):
    facts = report(host)
    kernel = debian_kernel(host)
    assert facts["kernels"] == [kernel]
    assert f"linux-headers-{kernel}" in {package["name"] for package in facts["package_set"]}


# services, reboot and verify are steps of a host with a GPU: here the role decides once that it
# has no GPU and skips them. The upgrade rehearsal runs them alone on its simulated-GPU lab hosts
# (scripts/upgrade_rehearsal.py), where they have work to do.
NO_GPU = "no GPU in the containers: the step is for a host with one (the upgrade rehearsal runs it)"
test_every_documented_tag_runs_alone_in_check_mode = every_tag_check_mode_test(
    "nvidia_driver",
    run_converge,
    checksums,
    nothing_to_do={"nvidia_driver_services": NO_GPU, "nvidia_driver_reboot": NO_GPU, "nvidia_driver_verify": NO_GPU},
)


def test_preinstalled_driver_is_left_to_the_image(host):
    # A pin other than the converged one and no blacklist: a managing run would rewrite the
    # preferences and remove the blacklist; with the image owning the driver nothing moves.
    other_pin = "580.95.05" if is_trixie(host) else "580.82.07"
    changes_nothing(
        host,
        run_converge,
        checksums,
        "-e", "nvidia_driver_preinstalled=true",
        "-e", f"nvidia_driver_version={other_pin}",
        "-e", "nvidia_driver_blacklist_nouveau=false",
        "-e", "nvidia_driver_local_facts=false",
    )  # fmt: skip


test_bad_variables_fail_before_any_change = bad_variables_test(
    run_converge,
    checksums,
    [
        ('{"nvidia_driver_branch": "58x"}', "nvidia_driver_branch"),
        ('{"nvidia_driver_version": "570.172.08"}', "nvidia_driver_version"),
        ('{"nvidia_driver_version": "latest"}', "nvidia_driver_version"),
        ('{"nvidia_driver_platform": "Fedora-41"}', "nvidia_driver_platform"),
        ('{"nvidia_driver_source": "distribution"}', "nvidia_driver_branch"),  # bookworm carries 535 only
        ('{"nvidia_driver_build": "precompiled"}', "nvidia_driver_build"),
        ('{"nvidia_driver_repo_key": "not a key"}', "nvidia_driver_repo_key"),
        ('{"nvidia_driver_brnach": "580"}', "nvidia_driver_brnach"),
        ('{"nvidia_driver_require_gpu": true}', "nvidia_driver_require_gpu"),
        # apt and dnf match the text of the version: 580.95.5 names no package (item 12).
        ('{"nvidia_driver_version": "580.95.5"}', "last number with two digits"),
        # A branch or pin the repository does not carry, with what it carries (item 3).
        ('{"nvidia_driver_branch": "575"}', "carries the branch(es) 570, 580, 590"),
        ('{"nvidia_driver_version": "580.95.04"}', "branch 580 there has 580.82.07, 580.95.05"),
        # A kernel without packaged headers: DKMS would skip it (item 1).
        ('{"nvidia_driver_kernels": ["6.18.0-no-such-kernel"]}', "linux-headers-6.18.0-no-such-kernel"),
        ('{"nvidia_driver_kernels": ["not a kernel"]}', "nvidia_driver_kernels must list kernel releases"),
    ],
)


def test_a_cuda_keyring_source_for_the_same_uri_is_reused_then_replaced(host):
    # Item 7 of issue 11: cuda-keyring writes its own one-line source with another Signed-By
    # (NVIDIA/cuda-repo-management SIGNATURES.md); both together break apt for the whole host.
    if is_trixie(host):
        pytest.skip("the apt sources logic does not depend on the platform; one platform runs it")
    uri = f"file:///srv/nvidia-mirror/{expected(host)['platform']}/x86_64/"
    keyring_list = "/etc/apt/sources.list.d/cuda-debian12-x86_64.list"
    before = checksums(host)
    # A host that has only cuda-keyring's source (the role's own would already conflict with it).
    host.run_test(
        f"rm -f {SOURCES} && "
        "gpg --dearmor < /srv/nvidia-mirror/test-key.asc > /usr/share/keyrings/cuda-archive-keyring.gpg && "
        f"echo 'deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {uri} /' > {keyring_list}"
    )
    try:
        rc, output = run_converge(host)
        assert rc == 0, output
        assert "nvidia_driver_existing_source=reuse" in output
        assert not host.file(SOURCES).exists and host.file(keyring_list).exists
        update = host.run("LC_ALL=C apt-get update")
        assert update.rc == 0 and "Conflicting values" not in update.stderr, update.stderr
        assert f"Candidate: {expected(host)['version']}" in host.check_output(
            "LC_ALL=C apt-cache policy nvidia-driver-cuda"
        )

        rc, output = run_converge(host, "-e", "nvidia_driver_existing_source=replace")
        assert rc == 0, output
        assert not host.file(keyring_list).exists and host.file(SOURCES).exists
        assert host.run("LC_ALL=C apt-get update").rc == 0
    finally:
        host.run(f"rm -f {keyring_list} /usr/share/keyrings/cuda-archive-keyring.gpg")
    assert checksums(host) == before
