"""`ctx.peers.reachable(plugin)` in swim mode learns members' plugin lists from their `GET /info`:
an address that answers but is not that Beiran node (or is down) must not be dialled again on every
call, nor once per concurrent caller. The fake peer is a real TCP server counting connections."""

from __future__ import annotations

import asyncio

from beiran.peer import calls as calls_mod
from beiran.peer.calls import PeerCalls
from beiran_testkit.infopeer import InfoServer, swim_ctx

GOOD, ODD = "00000000-0000-4000-8000-0000000000bb", "00000000-0000-4000-8000-0000000000cc"


def test_failed_info_is_cached_briefly_shared_by_concurrent_callers_and_bounded(monkeypatch):
    monkeypatch.setattr(calls_mod, "INFO_FAIL_TTL", 0.5)

    async def main() -> None:
        good = InfoServer(b'{"uuid": "%s", "plugins": ["docker"]}' % GOOD.encode())
        odd = InfoServer(b'{"uuid": "someone-else", "plugins": ["docker"]}')  # not the member it is said to be
        urls = {GOOD: await good.start(), ODD: await odd.start()}
        dead = "00000000-0000-4000-8000-0000000000dd"
        gone = InfoServer(b"{}")
        urls[dead] = await gone.start()
        gone.server.close()
        await gone.server.wait_closed()  # connection refused from now on
        calls = PeerCalls(swim_ctx(urls))
        for _ in range(20):
            assert await calls.reachable("docker") == [GOOD]
        assert (good.connections, odd.connections) == (1, 1)
        await asyncio.gather(*(calls.reachable("docker") for _ in range(10)))
        assert odd.connections == 1
        await asyncio.sleep(0.6)  # the failure is forgotten soon: asked again, once
        await asyncio.gather(*(calls.reachable("docker") for _ in range(10)))
        assert (good.connections, odd.connections) == (1, 2)

        # concurrent first calls share one request
        fresh = PeerCalls(swim_ctx(urls))
        await asyncio.gather(*(fresh.reachable("docker") for _ in range(10)))
        assert odd.connections == 3

        # the memory of failures is bounded
        monkeypatch.setattr(calls_mod, "INFO_CACHE", 4)
        many = {f"00000000-0000-4000-8000-{i:012x}": urls[ODD] for i in range(10)}
        bounded = PeerCalls(swim_ctx(many))
        assert await bounded.reachable("docker") == []
        assert len(bounded._failed) == 4
        for p in (good, odd):
            p.server.close()
    asyncio.run(main())
