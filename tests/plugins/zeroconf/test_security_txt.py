"""Red team: a TXT record on the LAN (mDNS is unauthenticated) with a port of Latin-1 digits ('²'
passes `str.isdigit()`, fails `int()`) is a malformed service like any other, not a ValueError
that skipped the browser's own handling of malformed services (found; failed before)."""

from __future__ import annotations

import uuid

import pytest

from beiran_plugins.zeroconf.txt import MalformedService, parse


@pytest.mark.parametrize("port", ["\u00b2", "8\u00b9", "\u0668"])  # superscripts, an Arabic-Indic digit
def test_a_txt_port_of_non_ascii_digits_is_a_malformed_service(port):
    props = {b"uuid": str(uuid.uuid4()).encode(), b"port": port.encode()}
    with pytest.raises(MalformedService):
        parse(props, None, ["127.0.0.1"])
