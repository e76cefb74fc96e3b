"""Red team on the /info caches of `ctx.peers.reachable(plugin)` in swim mode (beiran/peer/calls.py):
a member's address comes from membership, which an attacker holding the token can move for a
moment (an alive claim at the next incarnation, at its own address, until the member refutes it).
What the attacker's address answered must not outlive that moment. In-process: the real PeerCalls
against real HTTP servers (the member and the attacker), membership's address map swapped as the
claim and the refutation would swap it."""

from __future__ import annotations

import asyncio

from beiran.peer.calls import PeerCalls
from beiran_testkit.infopeer import InfoServer, swim_ctx

MEMBER = "00000000-0000-4000-8000-0000000000bb"


def test_a_plugin_list_learned_at_a_hijacked_address_is_not_kept_after_the_member_refutes():
    """Found: the failure cache was keyed by the address it was learned at, the success cache was
    not: a plugin list the attacker's address answered for the member (say, no plugins) stood for
    INFO_TTL (5 minutes) after the member had its address back, so preheats and offline answers
    passed the member over (or counted it for plugins it lacks)."""
    async def main() -> None:
        real = InfoServer(b'{"uuid": "%s", "plugins": ["docker", "npm"]}' % MEMBER.encode())
        fake = InfoServer(b'{"uuid": "%s", "plugins": []}' % MEMBER.encode())
        real_url, fake_url = await real.start(), await fake.start()
        urls = {MEMBER: fake_url}  # the alive claim moved the member to the attacker's address
        calls = PeerCalls(swim_ctx(urls))
        assert await calls.reachable("docker") == []
        urls[MEMBER] = real_url  # the member refuted: its own address again
        assert await calls.reachable("docker") == [MEMBER]
        assert await calls.reachable("npm") == [MEMBER]
        assert real.connections == 1  # and learned once there, then cached
        for s in (real, fake):
            s.server.close()
    asyncio.run(main())
