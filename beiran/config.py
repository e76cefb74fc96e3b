"""Effective configuration: defaults < TOML file < BEIRAN_* environment < command-line flags.

Plugin sections (`[plugins.<name>]`) are passed through as dicts; each plugin validates its own.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from beiran import config_check, config_env
from beiran.config_check import Provenance
from beiran.errors import ConfigError
from beiran.proxies import ProxyConfig, masked
from beiran.proxies import resolve as resolve_proxy

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DEFAULT_CONFIG_FILE = Path("/etc/beiran/config.toml")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?\s*$", re.I)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: Any, what: str = "size") -> int | None:
    """Accept 1048576, "512M", "10GiB"; None/0/"" mean unlimited."""
    if value in (None, "", 0, "0"):
        return None
    if isinstance(value, int) and value > 0:
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ConfigError(f"{what}: expected a size such as 512M or 10G, got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_hostport(value: str, default_port: int = 8888) -> tuple[str, int]:
    """'127.0.0.2:8888', '[::1]:8888', ':8888', '127.0.0.2' -> (host, port)."""
    if not isinstance(value, str):  # a plugin's `listen = 3142` reaches here unchecked
        raise ConfigError(f"{value!r} is not HOST:PORT: write it as a string, e.g. \"127.0.0.1:{value}\"")
    value = value.strip()
    if value.isdigit():  # `--listen 8888` would otherwise be a host named 8888
        raise ConfigError(f"{value!r} is a port alone: write HOST:PORT (e.g. 127.0.0.1:{value}, "
                          f"or :{value} for every address)")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":") or str(default_port)
    elif value.count(":") == 1:
        host, port = value.split(":")
    elif value.count(":") > 1:
        host, port = value, str(default_port)
    else:
        host, port = value, str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{value!r} is not HOST:PORT with a port from 1 to 65535")
    return host or "0.0.0.0", int(port)


def _default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/beiran")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "beiran"


def _default_run_dir(data_dir: Path) -> Path:
    """The system run dir for the default data dir; a daemon given its own data dir keeps its
    socket there too, so several daemons can run side by side."""
    if data_dir != _default_data_dir():
        return data_dir
    if os.geteuid() == 0:
        return Path("/run/beiran")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "beiran" if xdg else data_dir


@dataclass
class StoreConfig:
    max_size: int | None = None  # bytes; None = no cap
    reserve_free: int = 256 << 20  # refuse writes that would leave less free disk than this
    fsync: bool = True  # flush each blob before it becomes visible; off only where durability does not matter


@dataclass
class FetchConfig:
    large_blob_threshold: int = 32 << 20  # blobs this large are fetched in ranges from several peers
    piece_size: int = 8 << 20
    max_parallel_peers: int = 4
    peer_timeout: float = 30.0  # seconds without a byte before a source is given up
    origin_delegation: bool = True  # ask the blob's rendezvous owner to fetch cold blobs
    peer_max_fetches: int = 64  # delegated fetches one peer may have in flight on this node
    peer_max_bytes: int = 8 << 30  # and the bytes they may claim together
    #: bytes a second a peer transfer must average over every peer_timeout (its head included)
    peer_min_rate: int = 64 << 10
    #: bytes a peer may send of a blob whose size nobody this node trusts gave (also capped by
    #: store.max_size and the free disk)
    max_unknown_size: int = 1 << 30


#: private, carrier-grade NAT, unique-local, link-local IPv6 and loopback ranges: where LAN peers live.
#: 169.254.0.0/16 (cloud metadata services) and public addresses are left out on purpose.
DEFAULT_PEER_CIDRS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
                      "fc00::/7", "fe80::/10", "::1/128"]


@dataclass
class LimitsConfig:
    """Caps on what peers and clients can make this node spend (see README, "Limits")."""

    peer_max_blobs: int = 250_000  # blobs one peer may announce; beyond it the peer is dropped
    peer_max_blobs_total: int = 2_000_000  # over all peers: the peer that goes past it is dropped
    peer_uploads: int = 32  # blob bodies served to peers at once; more get 429 and try another holder
    peer_forget_after: float = 60.0  # seconds a gone peer's holdings are kept for a quick resync
    connections_per_ip: int = 256  # concurrent TCP connections from one address, on every listener
    max_connections: int = 0  # concurrent TCP connections per listener; 0 = 3/4 of the open-file limit
    header_timeout: float = 20.0  # seconds to send request headers (and idle keep-alive time)
    body_timeout: float = 120.0  # seconds to send a request body
    max_header_size: int = 64 << 10


@dataclass
class OfflineConfig:
    """Metadata from peers while an upstream is down (beiran/offline.py)."""

    quorum: int = 2  # distinct peers that must return the same answer (and a majority); at least 2
    max_peers: int = 8  # peers asked per question
    timeout: float = 5.0  # seconds per peer


@dataclass
class ClusterConfig:
    """How the peer protocol scales (beiran/peer/cluster.py)."""

    #: up to this many members every node keeps a websocket to every other (today's full mesh);
    #: above it the cluster runs on SWIM membership, a who-has directory and a bounded link pool,
    #: and falls back to the full mesh below 3/4 of it
    full_mesh_max: int = 64
    max_links: int = 64  # peers this node keeps links open to at once when above full_mesh_max


@dataclass
class Config:
    data_dir: Path = field(default_factory=_default_data_dir)
    run_dir: Path | None = None
    listen: str = "0.0.0.0:8888"
    #: HOST[:PORT] peers are told to reach this node at; default: the listen address (for 0.0.0.0,
    #: a guess from the host name). Set it when listening on every address, as a DaemonSet does.
    advertise: str | None = None
    socket: Path | None = None
    log_level: str = "info"
    peers: list[str] = field(default_factory=list)
    cluster_token: str | None = None
    client_cidrs: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    peer_cidrs: list[str] = field(default_factory=lambda: list(DEFAULT_PEER_CIDRS))
    client_hosts: list[str] = field(default_factory=list)  # names clients use in Host, see beiran.access
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 6.0
    origins: dict[str, str] = field(default_factory=dict)
    store: StoreConfig = field(default_factory=StoreConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)  # upstream proxies for origin requests
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    testing: dict[str, Any] = field(default_factory=dict)  # Beiran's own tests only: see TESTING_SWITCHES
    source_file: Path | None = None

    @property
    def listen_host(self) -> str:
        return parse_hostport(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return parse_hostport(self.listen)[1]

    @property
    def socket_path(self) -> Path:
        return self.socket or (self.run_dir or self.data_dir) / "beirand.sock"

    def plugin_section(self, name: str) -> dict[str, Any]:
        return dict(self.plugins.get(name) or {})

    def plugin_enabled(self, name: str) -> bool:
        return bool(self.plugin_section(name).get("enabled", True))

    def client_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return list(_networks(tuple(self.client_cidrs)))  # asked on every request: parsed once

    def peer_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return list(_networks(tuple(self.peer_cidrs)))

    def to_public_dict(self) -> dict[str, Any]:
        """The effective config, with secrets masked."""
        data = asdict(self)
        for key, value in list(data.items()):
            if isinstance(value, Path):
                data[key] = str(value)
        data["socket"] = str(self.socket_path)
        data["run_dir"] = str(self.run_dir)
        if data.get("cluster_token"):
            data["cluster_token"] = "***"
        _mask_secrets(data["plugins"])
        data["proxy"] = {k: masked(v) if k != "no_proxy" else v for k, v in data["proxy"].items()}
        return data


@functools.lru_cache(maxsize=64)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _mask_secrets(section: dict[str, Any]) -> None:
    """Mask password/token/secret values at any depth ([plugins.docker.registries."x"] password)."""
    for k, v in list(section.items()):
        if isinstance(v, dict):
            _mask_secrets(v)
        elif any(s in str(k).lower() for s in ("password", "token", "secret")):
            section[k] = "***"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_Section = TypeVar("_Section", bound="DataclassInstance")


def _build_section(cls: type[_Section], data: dict[str, Any], prefix: str, where: Provenance) -> _Section:
    known = {f.name: f for f in fields(cls) if f.name != "source_file"}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where.of(prefix + key)}: unknown setting {prefix}{key}")
        kwargs[key] = value
    obj = cls(**kwargs)

    def size(key: str, value: Any) -> int | None:
        try:
            return parse_size(value, f"{prefix}{key}")
        except ConfigError as exc:
            raise ConfigError(f"{where.of(prefix + key)}: {exc.message}") from None

    if isinstance(obj, StoreConfig):
        obj.max_size = size("max_size", obj.max_size)
        obj.reserve_free = size("reserve_free", obj.reserve_free) or 0
    if isinstance(obj, LimitsConfig):
        obj.max_header_size = size("max_header_size", obj.max_header_size) or (64 << 10)
    if isinstance(obj, FetchConfig):
        obj.large_blob_threshold = size("large_blob_threshold", obj.large_blob_threshold) or 0
        obj.piece_size = size("piece_size", obj.piece_size) or (8 << 20)
        obj.peer_max_bytes = size("peer_max_bytes", obj.peer_max_bytes) or 0
        obj.peer_min_rate = size("peer_min_rate", obj.peer_min_rate) or 0
        obj.max_unknown_size = size("max_unknown_size", obj.max_unknown_size) or 0
    if isinstance(obj, ClusterConfig):
        for name, low in (("full_mesh_max", 2), ("max_links", 4)):
            value = getattr(obj, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 1_000_000:
                raise ConfigError(f"{where.named('cluster.' + name)} must be an integer of at "
                                  f"least {low}, not {value!r}")
    if isinstance(obj, OfflineConfig) and not (isinstance(obj.quorum, int) and obj.quorum >= 2):
        raise ConfigError(f"{where.named('offline.quorum')} must be an integer of at least 2 (one "
                          f"peer's word is never enough during an outage), not {obj.quorum!r}")
    return obj


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None, strict_env: bool = True) -> Config:
    """Build the effective config. `overrides` are command-line flags (None values ignored).
    `strict_env=False` skips BEIRAN_* variables that name no setting instead of refusing them."""
    environ = dict(os.environ if environ is None else environ)
    file_data: dict[str, Any] = {}
    source: Path | None = None
    path = path or environ.get("BEIRAN_CONFIG")
    if path:
        source = Path(path).absolute()
        if not source.is_file():
            raise ConfigError(f"config file {source} not found")
    elif DEFAULT_CONFIG_FILE.is_file():
        source = DEFAULT_CONFIG_FILE
    if source:
        try:
            file_data = tomllib.loads(source.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {source}: {exc}") from exc
    where = Provenance(f"config file {source}" if source else "config")
    where.add(file_data)
    data = _merge(file_data, config_env.env_overrides(Config, environ, strict_env, where))
    flags = {k: v for k, v in (overrides or {}).items() if v not in (None, (), [])}
    for key in flags:
        where.origin[key] = "--" + {"peers": "peer"}.get(key, key).replace("_", "-")
    data = _merge(data, flags)
    if isinstance(data.get("peers"), str):  # `peers = "a, b"` in the file, as in BEIRAN_PEERS
        data["peers"] = config_env.parse_env_value("peers", data["peers"])
    config_check.check(data, Config, where)
    plugins = data.pop("plugins", {}) or {}
    if not isinstance(plugins, dict):
        raise ConfigError(f"{where.of('plugins')}: plugins must be a table ([plugins.<name>] sections), "
                          f"not {plugins!r}")
    for name, section in plugins.items():
        if not isinstance(section, dict):
            raise ConfigError(f"{where.of('plugins.' + name)}: [plugins.{name}] must be a table, not {section!r}")
        if not isinstance(section.get("enabled", True), bool):  # "no" would be truthy: the plugin would run
            raise ConfigError(f"{where.named(f'plugins.{name}.enabled')} must be true or false, "
                              f"not {section['enabled']!r}")
    try:
        store = _build_section(StoreConfig, data.pop("store", {}) or {}, "store.", where)
        fetch = _build_section(FetchConfig, data.pop("fetch", {}) or {}, "fetch.", where)
        offline = _build_section(OfflineConfig, data.pop("offline", {}) or {}, "offline.", where)
        proxy = _build_section(ProxyConfig, data.pop("proxy", {}) or {}, "proxy.", where)
        limits = _build_section(LimitsConfig, data.pop("limits", {}) or {}, "limits.", where)
        cluster = _build_section(ClusterConfig, data.pop("cluster", {}) or {}, "cluster.", where)
        cfg = _build_section(Config, data, "", where)
    except TypeError as exc:
        raise ConfigError(f"{where.file_label}: {exc}") from exc
    cfg.store, cfg.fetch, cfg.plugins, cfg.source_file = store, fetch, plugins, source
    cfg.offline = offline
    cfg.proxy = resolve_proxy(proxy, environ)
    cfg.limits = limits
    cfg.cluster = cluster
    cfg.data_dir = Path(cfg.data_dir).expanduser()
    cfg.run_dir = Path(cfg.run_dir).expanduser() if cfg.run_dir else _default_run_dir(cfg.data_dir)
    cfg.socket = Path(cfg.socket).expanduser() if cfg.socket else None
    try:
        cfg.peers = [normalize_peer_url(p) for p in cfg.peers]
    except ConfigError as exc:
        raise ConfigError(f"{where.named('peers')}: {exc.message}") from None
    for key in ("listen", "advertise"):  # listen first: advertise's default port is listen's
        value = getattr(cfg, key)
        try:
            if value is not None:
                parse_hostport(value, cfg.listen_port if key == "advertise" else 8888)
        except ConfigError as exc:
            raise ConfigError(f"{where.named(key)}: {exc.message}") from None
    for name, url in cfg.origins.items():
        if not config_check.http_url(url):
            raise ConfigError(f"{where.named('origins.' + name)} must be an http:// or https:// URL such as "
                              f"\"http://files.example/base\", not {url!r}")
    for key in ("client_cidrs", "peer_cidrs"):
        try:
            _networks(tuple(getattr(cfg, key)))
        except ValueError as exc:
            raise ConfigError(f"{where.named(key)}: {exc}") from None
    _check_testing(cfg.testing, environ)
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{where.named('log_level')} must be debug, info, warning or error, "
                          f"not {cfg.log_level!r}")
    return cfg


#: `[testing]` switches that make a daemon misbehave on purpose (the tampering node of the tests)
TESTING_SWITCHES = {"corrupt_serving": bool, "serve_rate": int}
#: ...honoured only when the daemon's environment also says so, so that no config file alone can
#: turn a production node into a tampering one.
TESTING_ENV = "BEIRAN_TESTING_HOOKS"


def _check_testing(testing: Any, environ: dict[str, str]) -> None:
    if not testing:
        return
    if not isinstance(testing, dict):
        raise ConfigError("config: [testing] must be a table")
    for key, value in testing.items():
        kind = TESTING_SWITCHES.get(key)
        if kind is None:
            raise ConfigError(f"config: unknown setting testing.{key}")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"config: testing.{key} must be {kind.__name__}")
    if environ.get(TESTING_ENV) != "1":
        raise ConfigError(f"config: [testing] ({', '.join(sorted(testing))}) is for Beiran's own tests: "
                          f"it makes this node misbehave on purpose, and is honoured only with {TESTING_ENV}=1")


def normalize_peer_url(value: str) -> str:
    """'127.0.0.2:8888' -> 'http://127.0.0.2:8888'; rejects anything but http(s) host:port."""
    value = value.strip().rstrip("/")
    if "://" not in value:
        value = "http://" + value
    scheme, _, rest = value.partition("://")
    if scheme not in ("http", "https") or not rest or "/" in rest:
        raise ConfigError(f"peer {value!r}: expected http://HOST:PORT")
    host, port = parse_hostport(rest)
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"
