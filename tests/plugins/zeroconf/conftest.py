"""Zeroconf test helpers: an mDNS announcer/browser in the test process (python-zeroconf, bound to
one loopback address) and a unique cluster name per test, so concurrent test runs on this machine,
which all share the loopback interface's multicast, never join each other's nodes."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator

import pytest
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from beiran_testkit.netns import netns_lan  # noqa: F401 - the fixture

SERVICE = "_beiran._tcp.local."


@pytest.fixture
def zc_cluster() -> str:
    """A cluster name of this test's own: its nodes ignore every other test's announcements."""
    return f"t-{uuid.uuid4().hex[:12]}"


class Announcer:
    """Announce arbitrary (also broken) services and look services up, like any host on the LAN."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.zc = Zeroconf(interfaces=[ip], ip_version=IPVersion.V4Only)

    def info(self, instance: str, address: str, port: int, properties: dict | bytes,
             type_: str = SERVICE) -> ServiceInfo:
        return ServiceInfo(type_, f"{instance}.{type_}", port=port, properties=properties,
                           server=f"{instance}-host.local.", addresses=[socket.inet_aton(address)])

    def announce(self, *infos: ServiceInfo, timeout: float = 15) -> None:
        """Register several services at once (each takes ~1.6 s of probing)."""
        async def register(info: ServiceInfo) -> None:
            await (await self.zc.async_register_service(info, strict=False))

        futures = [asyncio.run_coroutine_threadsafe(register(i), self.zc.loop) for i in infos]
        for fut in futures:
            fut.result(timeout)

    def withdraw(self, info: ServiceInfo) -> None:
        """Goodbye packets for one service."""
        self.zc.unregister_service(info)

    def lookup(self, type_: str, name: str, timeout_ms: int = 5000) -> ServiceInfo | None:
        return self.zc.get_service_info(type_, name, timeout_ms)

    def close(self) -> None:
        self.zc.close()


@pytest.fixture
def announcer(cluster) -> Iterator[Announcer]:
    a = Announcer(cluster.ip(20))
    yield a
    a.close()
