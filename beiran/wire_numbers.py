"""Numbers in what a peer or the network sends (HTTP heads, auth headers, member addresses, TXT
records): ASCII digits only. `str.isdigit()` also takes Latin-1's superscripts ('\xb2' is '²'),
which int() then refuses with a ValueError no caller takes for the sender's fault."""

from __future__ import annotations


def ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def port_number(text: str) -> int | None:
    """'8888' -> 8888; None unless `text` is a port (1-65535) written in ASCII digits."""
    if not ascii_digits(text):
        return None
    port = int(text)
    return port if 0 < port < 65536 else None
