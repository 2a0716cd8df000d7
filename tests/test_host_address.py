"""gpu_fleet.common.is_host_address: what a host may report as its address before other hosts'
files carry it (slurm.conf, a training job's EnvironmentFile, the seed key's from= and
known_hosts). Each refused text is what it would plant there."""

from __future__ import annotations

import pytest
from ansible_collections.gpu_fleet.common.plugins.module_utils.host_address import is_host_address


@pytest.mark.parametrize("address", ["192.0.2.7", "10.0.0.1", "2001:db8::7", "gpu-017", "gpu-017.cluster.example"])
def test_an_ip_address_or_a_dns_name_is_one(address):
    assert is_host_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "",
        "192.0.2.7\nLD_PRELOAD=/tmp/planted.so",  # a line more in the training unit's EnvironmentFile
        "192.0.2.7\n* ssh-ed25519 AAAAplanted",  # a host key for every host in known_hosts
        '192.0.2.7",no-restrict="',  # out of the seed key's from="..." into its options
        "192.0.2.7,*",  # from= for every address
        "*",
        "192.0.2.7 Include=/tmp/planted.conf",  # a word more on slurm.conf's NodeName line
        "-oProxyCommand=planted",  # an option where a command line takes a host
        "a" * 64,  # longer than a DNS label
        None,
        ["192.0.2.7"],
    ],
)
def test_anything_more_or_less_is_not(address):
    assert not is_host_address(address)
