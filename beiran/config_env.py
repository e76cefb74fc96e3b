"""BEIRAN_* environment variables as settings: which variables are settings, and their values
(TOML values where they parse; a string setting as written; a list setting comma-separated)."""

from __future__ import annotations

import tomllib
import typing
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

from beiran.config_check import env_value, field_hint
from beiran.errors import ConfigError

if TYPE_CHECKING:
    from beiran.config_check import Provenance

ENV_PREFIX = "BEIRAN_"
#: BEIRAN_* variables that are not settings: which file to read, the switch for test hooks, the
#: CLI's traceback switch, and what the development scripts and the test suite use (BEIRAN_TEST_*,
#: BEIRAN_DIST, BEIRAN_ROOT).
NOT_SETTINGS = {"BEIRAN_CONFIG", "BEIRAN_TESTING_HOOKS", "BEIRAN_DIST", "BEIRAN_ROOT", "BEIRAN_TRACEBACK"}
NOT_SETTINGS_PREFIXES = ("BEIRAN_TEST_",)


def is_setting_var(name: str) -> bool:
    """Whether an environment variable is meant as a config setting (BEIRAN_LISTEN, ...)."""
    return (name.startswith(ENV_PREFIX) and name not in NOT_SETTINGS
            and not name.startswith(NOT_SETTINGS_PREFIXES))


def env_unknown(root: type, path: list[str]) -> str | None:
    """The dotted key an env var names when that is no setting (None when it is one). Plugin
    sections are the plugins' to check, as in the file."""
    top = {f.name for f in fields(root)} - {"source_file"}
    hints = typing.get_type_hints(root)
    sections = {name: kind for name, kind in hints.items() if isinstance(kind, type) and is_dataclass(kind)}
    dotted = ".".join(path)
    if not path[0] or path[0] not in top:
        return dotted
    if path[0] in sections:
        if len(path) != 2 or path[1] not in {f.name for f in fields(sections[path[0]])}:
            return dotted
    elif path[0] == "plugins":
        if len(path) < 3 or not all(path):
            return dotted
    elif path[0] not in ("origins", "testing") and len(path) != 1:
        return dotted
    return None


def env_overrides(root: type, environ: dict[str, str], strict: bool = True,
                  where: Provenance | None = None) -> dict[str, Any]:
    """BEIRAN_LISTEN=..., BEIRAN_STORE__MAX_SIZE=10G, BEIRAN_PLUGINS__DNS__ENABLED=false.

    A variable that names no setting is an error naming the variable (`strict`, the daemon's
    case), or skipped (a CLI command that only needs the socket path)."""
    out: dict[str, Any] = {}
    for key, raw in sorted(environ.items()):
        if not is_setting_var(key):
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        unknown = env_unknown(root, path)
        if unknown is not None:
            if strict:
                raise ConfigError(f"environment variable {key}: {unknown} is not a Beiran setting "
                                  f"(unset {key}, or see the settings in `beiran config --local`)")
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = env_value(field_hint(root, path), raw, parse_env_value(path[-1], raw))
        if where is not None:
            where.origin[".".join(path)] = f"environment variable {key}"
    return out


def parse_env_value(key: str, raw: str) -> Any:
    if key == "peers":
        return [p.strip() for p in raw.split(",") if p.strip()]
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
