"""Whether a text is one host address: an IP address or a DNS name, nothing more.

Addresses come from the hosts' own facts (default_ipv4) and reach other hosts' files: slurm.conf,
a training job's environment file, authorized_keys' from= and known_hosts. Whatever a host
reports must stay one word there: a newline, a quote, a comma or a space would add lines or
options of its own choosing.
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def is_host_address(address) -> bool:
    """'192.0.2.7', '2001:db8::7' and 'gpu-017.cluster.example' are; '', '*', 'a b' and 'a\\nb' are not."""
    if not isinstance(address, str):
        return False
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return len(address) <= 253 and _DNS_NAME.fullmatch(address) is not None
