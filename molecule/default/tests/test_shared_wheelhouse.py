"""The read-only host installs the loader from a wheelhouse mounted read-only
(hf_loader_wheelhouse_sync: false, molecule.yml): nothing is copied to it, and
what it installed is the production lock, as on the hosts that sync."""

testinfra_hosts = ["ansible://default-readonly"]

SHARED = "/srv/wheelhouse"
SYNCED = "/opt/hf-loader/wheelhouse"
VENV_PYTHON = "/opt/hf-loader/venv/bin/python"


def test_the_loader_came_from_the_shared_wheelhouse_and_nothing_was_copied(host):
    assert host.mount_point(SHARED).exists
    assert "ro" in host.mount_point(SHARED).options
    assert not host.file(SYNCED).exists, f"{SYNCED} was synced though hf_loader_wheelhouse_sync is false"
    lock = host.file("/opt/hf-loader/requirements.lock").content_string
    torch_pin = next(line.split()[0] for line in lock.splitlines() if line.startswith("torch=="))
    installed = host.check_output(f"{VENV_PYTHON} -c 'import torch; print(torch.__version__)'")
    assert f"torch=={installed.split('+')[0]}" == torch_pin
