"""Verify hf_env on the running containers: real shells, real systemd."""

from pathlib import Path

import pytest
from verify_helpers import (
    bad_variables_test,
    check_mode_changes_nothing,
    every_tag_check_mode_test,
    file_checksums,
    host_runner,
    is_trixie,
)

testinfra_hosts = ["ansible://all"]

CACHE_ROOT = "/srv/hf"
ENV_FILE = "/etc/hf-cache/hf.env"
TOKEN_FILE = "/etc/hf-cache/token"
run_converge = host_runner(Path(__file__).resolve().parents[1] / "converge.yml")
EXPECTED = {
    "HF_HOME": CACHE_ROOT,
    "HF_HUB_CACHE": f"{CACHE_ROOT}/hub",
    "HF_DATASETS_CACHE": f"{CACHE_ROOT}/datasets",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_TOKEN_PATH": TOKEN_FILE,
}
MANAGED_FILES = [ENV_FILE, TOKEN_FILE, "/etc/profile.d/hf-cache.sh", "/etc/environment.d/60-hf-cache.conf"]


def parse_env(text):
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def checksums(host):
    """The managed files, and whether a relative cache root landed in the remote working folder."""
    return {**file_checksums(host, MANAGED_FILES), "relative": host.file("relative").exists}


def test_login_shell_sees_the_environment(host):
    env = parse_env(host.check_output("su - trainer -c env"))
    for name, value in EXPECTED.items():
        assert env.get(name) == value, name


def test_systemd_service_sees_the_environment(host):
    output = host.check_output(
        f"systemd-run --quiet --wait --pipe --property=EnvironmentFile={ENV_FILE} --property=User=trainer /usr/bin/env"
    )
    env = parse_env(output)
    for name, value in EXPECTED.items():
        assert env.get(name) == value, name


def test_environment_d_is_what_systemd_user_managers_read(host):
    generator = "/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator"
    env = parse_env(host.check_output(generator))
    for name, value in EXPECTED.items():
        assert env.get(name) == value, name


def test_legacy_names_only_behind_the_flag(host):
    env = parse_env(host.file(ENV_FILE).content_string)
    if is_trixie(host):
        assert env["TRANSFORMERS_CACHE"] == f"{CACHE_ROOT}/hub"
        assert env["HF_DATASETS_TRUST_REMOTE_CODE"] == "0"
    else:
        assert "TRANSFORMERS_CACHE" not in env
        assert "HUGGINGFACE_HUB_CACHE" not in env


def test_nothing_switches_offline_mode_off(host):
    for path in MANAGED_FILES[:1] + MANAGED_FILES[2:]:
        content = host.file(path).content_string
        assert "OFFLINE=0" not in content.replace("'", "")
        assert "HF_HUB_OFFLINE" in content and "HF_DATASETS_OFFLINE" in content


@pytest.mark.parametrize(
    ("path", "owner", "mode"),
    [
        (ENV_FILE, "root", 0o644),
        ("/etc/profile.d/hf-cache.sh", "root", 0o644),
        ("/etc/environment.d/60-hf-cache.conf", "root", 0o644),
        (TOKEN_FILE, "trainer", 0o600),
        # The cache is root's although hf_env_owner names trainer (the token's reader).
        (CACHE_ROOT, "root", 0o755),
        (f"{CACHE_ROOT}/hub", "root", 0o755),
        (f"{CACHE_ROOT}/datasets", "root", 0o755),
    ],
)
def test_owners_and_modes(host, path, owner, mode):
    target = host.file(path)
    assert target.exists
    assert target.user == owner
    assert target.mode == mode


@pytest.mark.parametrize("folder", [CACHE_ROOT, f"{CACHE_ROOT}/hub", f"{CACHE_ROOT}/datasets"])
def test_the_training_user_cannot_write_the_cache(host, folder):
    attempt = host.run(f"runuser -u trainer -- touch {folder}/planted-by-trainer")
    assert attempt.rc != 0 and "Permission denied" in attempt.stderr, attempt.stdout + attempt.stderr
    assert not host.file(f"{folder}/planted-by-trainer").exists


def test_token_is_written_and_never_printed(host):
    token = "hf_verifyRotatedToken9876543210"
    rc, output = run_converge(host, "-v", "--diff", "-e", f"molecule_hf_token={token}")
    assert rc == 0, output
    assert host.file(TOKEN_FILE).content_string.strip() == token
    assert token not in output
    # The rotation itself is a change and must say so, without the secret.
    assert "changed=1" in output or "changed=2" in output or "changed=3" in output


def test_check_mode_changes_nothing_and_reports_the_change(host):
    output = check_mode_changes_nothing(host, run_converge, checksums, "-e", "hf_env_cache_root=/srv/elsewhere")
    assert "/srv/elsewhere" in output  # the diff shows what would change
    assert not host.file("/srv/elsewhere").exists


test_bad_variables_fail_before_any_change = bad_variables_test(
    run_converge,
    checksums,
    [
        ('{"hf_env_cache_root": "relative/cache"}', "hf_env_cache_root"),
        ('{"hf_env_offline": "sometimes"}', "hf_env_offline"),
        ('{"hf_env_offline": false}', "hf_env_offline"),
        ('{"hf_env_cahce_root": "/srv/typo"}', "hf_env_cahce_root"),
        ('{"hf_env_extra_variables": {"HF_HUB_OFFLINE": "0"}}', "HF_HUB_OFFLINE"),
        ('{"hf_env_owner": "nosuchuser"}', "hf_env_owner"),
    ],
)

# No tag is declared nothing_to_do: by the time this runs, the token test has rotated the token
# away from the converge's, so hf_env and hf_env_configure include configure.yml and write it
# (in check mode) as their own work.
test_every_documented_tag_runs_alone_in_check_mode = every_tag_check_mode_test("hf_env", run_converge, checksums)
