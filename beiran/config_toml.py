"""The effective config as a TOML file a daemon can be started with (`beiran config`).

The output must round-trip: `beiran config > f.toml && beiran daemon --config f.toml` gives the same
config. So sizes are written as a person would write them (`256M`), values TOML cannot hold (unset
ones) are left out, and masked secrets are named in a comment rather than written as `"***"` (which
would become the new node's real token).
"""

from __future__ import annotations

from typing import Any

#: settings that hold sizes in bytes (written back with a unit when one divides them exactly)
SIZE_KEYS = {("store", "max_size"), ("store", "reserve_free"), ("fetch", "large_blob_threshold"),
             ("fetch", "piece_size"), ("fetch", "peer_min_rate"), ("fetch", "max_unknown_size")}
MASK = "***"
_UNITS = (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10))


def format_size(n: int) -> str | int:
    """268435456 -> "256M"; a size no unit divides stays a plain number of bytes."""
    for suffix, unit in _UNITS:
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return n


def _clean(data: dict[str, Any], path: tuple[str, ...], masked: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        where = (*path, str(key))
        if value is None:
            continue
        if value == MASK:
            masked.append(".".join(_key(k) for k in where))
            continue
        if isinstance(value, dict):
            inner = _clean(value, where, masked)
            if inner or path:  # an empty top-level table says nothing ([testing], [origins])
                out[key] = inner
            continue
        if where in SIZE_KEYS and isinstance(value, int) and not isinstance(value, bool):
            value = format_size(value)
        out[key] = value
    return out


def _key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else f'"{k}"'


def config_toml(public: dict[str, Any]) -> str:
    """TOML text for a config as `Config.to_public_dict()` (or the daemon's `GET /config`) gives it."""
    import tomli_w

    data = dict(public)
    source = data.pop("source_file", None)
    masked: list[str] = []
    body = tomli_w.dumps(_clean(data, (), masked))
    head = []
    if source:
        head.append(f"# effective config; the daemon read {source}")
    if masked:
        head.append(f"# not shown (secrets): {', '.join(masked)}")
    return "\n".join(head) + ("\n\n" if head else "") + body
