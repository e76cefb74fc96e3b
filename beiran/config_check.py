"""Type and range checks of the core settings, with errors that name the key and where its value
came from (the file, a BEIRAN_* variable, a flag): a wrong value stops the daemon with one line
instead of a traceback deep inside whatever first used it."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from beiran.errors import ConfigError

#: settings whose value is a size ("512M", "10G" or bytes): parse_size checks those
SIZE_KEYS = {"store.max_size", "store.reserve_free", "fetch.large_blob_threshold", "fetch.piece_size",
             "fetch.peer_max_bytes", "limits.max_header_size", "fetch.peer_min_rate", "fetch.max_unknown_size"}
#: numbers for which 0 means nothing would ever work (negative numbers are refused everywhere)
POSITIVE_KEYS = {"heartbeat_interval", "heartbeat_timeout", "fetch.max_parallel_peers", "fetch.peer_timeout",
                 "offline.max_peers", "offline.timeout", "limits.connections_per_ip", "limits.header_timeout",
                 "limits.body_timeout"}
#: checked where they are built, with a message that says why the bound is what it is
OWN_CHECKS = {"offline.quorum", "cluster.full_mesh_max", "cluster.max_links"}
#: tables passed through as they are (plugins check their own sections; `[testing]` has its check)
FREE_TABLES = {"plugins", "testing"}


class Provenance:
    """Where each dotted key's value came from, for error messages."""

    def __init__(self, file_label: str) -> None:
        self.file_label = file_label
        self.origin: dict[str, str] = {}

    def add(self, data: dict[str, Any], label: str | None = None,
            env_names: dict[str, str] | None = None) -> None:
        for key, _ in leaves(data):
            self.origin[key] = (env_names or {}).get(key) or label or self.file_label

    def of(self, key: str) -> str:
        """The origin of `key`, or of the nearest table above it."""
        parts = key.split(".")
        while parts:
            found = self.origin.get(".".join(parts))
            if found:
                return found
            parts.pop()
        return self.file_label

    def named(self, key: str) -> str:
        """`key` and its origin, for a message: "config file F: store.fsync", "--listen"."""
        origin = self.of(key)
        return origin if origin.startswith("--") else f"{origin}: {key}"


def leaves(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        yield dotted, value
        if isinstance(value, dict) and dotted not in FREE_TABLES:
            yield from leaves(value, dotted + ".")


def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_hint(root: type, path: list[str]) -> Any:
    """The annotation of the core setting at `path` (None for plugin sections and unknown keys)."""
    cls: Any = root
    for i, part in enumerate(path):
        if not (isinstance(cls, type) and is_dataclass(cls)) or part not in {f.name for f in fields(cls)}:
            return None
        hint = hints(cls)[part]
        if i == len(path) - 1:
            return hint
        cls = hint
    return None


def describe(hint: Any) -> str:
    """A type as a person reads it: "an integer", "a list of strings", ..."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if _is_union(hint):
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {describe(args[0]).split(' ', 1)[-1]}s" if args else "a list"
    if origin is dict:
        return f"a table of {describe(args[-1]).split(' ', 1)[-1]}s" if args and args[-1] is not Any else "a table"
    if isinstance(hint, type) and is_dataclass(hint):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            Path: "a path (a string)"}.get(hint, str(hint))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if _is_union(hint):
        return any(matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(matches(v, item) for v in value)
    if origin is dict:
        _, item = typing.get_args(hint) or (str, Any)
        return isinstance(value, dict) and all(isinstance(k, str) and matches(v, item) for k, v in value.items())
    if isinstance(hint, type) and is_dataclass(hint):
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, (str, Path))
    return isinstance(hint, type) and isinstance(value, hint)


def check(data: dict[str, Any], root: type, where: Provenance) -> None:
    """Refuse a value of the wrong type or out of range, naming the key and its origin.
    Unknown keys are left to the section builder, which names them the same way."""
    for key, value in leaves(data):
        path = key.split(".")
        if path[0] in FREE_TABLES:
            continue
        hint = field_hint(root, path)
        if hint is None or key in OWN_CHECKS:
            continue
        if key in SIZE_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
                    isinstance(value, (int, float)) and value < 0):
                raise ConfigError(f"{where.named(key)} must be a size such as 512M or 10G (or bytes), "
                                  f"not {value!r}")
            continue
        if not matches(value, hint):
            raise ConfigError(f"{where.named(key)} must be {describe(hint)}, not {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0 or (value == 0 and key in POSITIVE_KEYS):
                least = "more than 0" if key in POSITIVE_KEYS else "0 or more"
                raise ConfigError(f"{where.named(key)} must be {least}, not {value!r}")


def env_value(hint: Any, raw: str, parsed: Any) -> Any:
    """A BEIRAN_* value for a setting of type `hint`: strings (and paths) stay as written, so that
    BEIRAN_CLUSTER_TOKEN=12345 is a token, not a number; lists may be comma-separated."""
    if hint is None:
        return parsed
    members = set(typing.get_args(hint)) if _is_union(hint) else {hint}
    if members & {str, Path} and not isinstance(parsed, (list, dict)):
        return raw
    if any(typing.get_origin(m) is list for m in members) and not isinstance(parsed, list):
        return [p.strip() for p in raw.split(",") if p.strip()]
    return parsed


def http_url(url: str) -> bool:
    """Whether `url` is http(s) with a host (and, when it has one, a port from 0 to 65535)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        _port = parts.port  # raises on a port out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def refuse_unknown(plugin: str, section: dict[str, Any], known: set[str] | frozenset[str]) -> None:
    """One wording for every plugin's section: a typo'd key names itself and what would be right
    (`enabled` is the loader's, known to every plugin)."""
    unknown = sorted(set(section) - set(known) - {"enabled"})
    if unknown:
        raise ConfigError(f"[plugins.{plugin}]: unknown setting(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(set(known) - {'enabled'}))})")
