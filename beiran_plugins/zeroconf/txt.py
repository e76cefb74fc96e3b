"""The TXT record of `_beiran._tcp`: what we announce and the strict parsing of what others announce.

Anything on the LAN can announce the service type, so every field is checked before a node is even
probed; a bad record is reported as MalformedService and the service is ignored.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from beiran.wire_numbers import port_number

TXT_VERSION = "1"
MAX_TXT_VALUE = 200  # a TXT string is at most 255 bytes including the key


class MalformedService(ValueError):
    """The announced service cannot be a Beiran node."""


@dataclass(frozen=True)
class Announced:
    """A checked `_beiran._tcp` announcement."""

    uuid: str
    port: int
    addresses: tuple[str, ...]
    version: str
    cluster: str
    plugins: tuple[str, ...]


def build_txt(node_uuid: str, version: str, port: int, cluster: str, plugins: list[str]) -> dict[str, str]:
    listed = ""
    for name in plugins:  # keep whole names only, within one TXT string
        if len(listed) + len(name) + 1 > MAX_TXT_VALUE:
            break
        listed = f"{listed},{name}" if listed else name
    return {"txtvers": TXT_VERSION, "uuid": node_uuid, "version": version[:64], "port": str(port),
            "cluster": cluster[:64], "plugins": listed}


def _text(props: dict[bytes, bytes | None], key: str, required: bool = True) -> str | None:
    raw = props.get(key.encode())
    if raw is None:
        if required:
            raise MalformedService(f"TXT has no {key}")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedService(f"TXT {key} is not UTF-8") from None


def parse(props: dict[bytes, bytes | None], srv_port: int | None, addresses: list[str]) -> Announced:
    """Check a resolved service; raises MalformedService with a one-line reason."""
    raw_uuid = _text(props, "uuid")
    try:
        node = str(uuidlib.UUID(raw_uuid or ""))
    except ValueError:
        raise MalformedService(f"TXT uuid {(raw_uuid or '')[:40]!r} is not a UUID") from None
    port_text = _text(props, "port", required=False)
    port = srv_port
    if port_text is not None:
        port = port_number(port_text)
        if port is None:
            raise MalformedService(f"TXT port {port_text[:20]!r} is not a port number")
        if srv_port and port != srv_port:
            raise MalformedService(f"TXT port {port_text} disagrees with the SRV port {srv_port}")
    if not port or not 0 < port < 65536:
        raise MalformedService("no usable port")
    if not addresses:
        raise MalformedService("no address")
    plugins = tuple(p for p in (_text(props, "plugins", required=False) or "").split(",") if p)
    return Announced(uuid=node, port=port, addresses=tuple(addresses),
                     version=(_text(props, "version", required=False) or "")[:64],
                     cluster=(_text(props, "cluster", required=False) or "default")[:64], plugins=plugins)


def printable(props: dict[bytes, bytes | None]) -> dict[str, Any]:
    """TXT for status output: undecodable bytes shown escaped, never raised."""
    return {k.decode("utf-8", "backslashreplace")[:64]:
            None if v is None else v.decode("utf-8", "backslashreplace")[:MAX_TXT_VALUE]
            for k, v in list(props.items())[:32]}
