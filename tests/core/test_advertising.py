"""`beiran.advertising`: which of a node's addresses a client-serving listener is announced on."""

from __future__ import annotations

import ipaddress

import pytest

from beiran.advertising import client_addresses

LAN = [ipaddress.ip_network(c) for c in ("127.0.0.0/8", "::1/128", "10.0.0.0/8")]


@pytest.mark.parametrize("bound, cidrs, expect", [
    (["127.0.0.1"], LAN, "loopback"),
    (["::1"], LAN, "loopback"),
    (["localhost"], LAN, "loopback"),
    (["0.0.0.0", "::"], [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")],
     "admit only loopback"),
])
def test_nothing_is_announced_for_a_proxy_other_hosts_cannot_use(bound, cidrs, expect):
    reason = client_addresses(bound, cidrs)
    assert isinstance(reason, str) and expect in reason


def test_announced_only_where_it_listens_and_clients_are_admitted():
    wildcard = client_addresses(["0.0.0.0", "::"], [*LAN, ipaddress.ip_network("fd00::/8")])
    assert not isinstance(wildcard, str)
    assert wildcard("10.1.2.3") and wildcard("fd12::5") and wildcard("fe80::1%eth0") is False
    assert not wildcard("192.168.1.5")  # listening there, but client_cidrs refuse its clients
    assert not wildcard("127.0.0.1") and not wildcard("::1") and not wildcard("not-an-ip")

    v4_only = client_addresses(["0.0.0.0"], [*LAN, ipaddress.ip_network("fd00::/8")])
    assert not isinstance(v4_only, str) and v4_only("10.9.9.9") and not v4_only("fd12::5")

    one = client_addresses(["10.1.2.3"], [ipaddress.ip_network("0.0.0.0/0")])
    assert not isinstance(one, str)
    assert one("10.1.2.3") and not one("10.1.2.4")  # another address of the node: not listening there
