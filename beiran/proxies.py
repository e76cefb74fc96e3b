"""Upstream (forward) proxies for origin requests: `[proxy]` in the config, else the environment's
`http_proxy`/`HTTP_PROXY`, `https_proxy`/`HTTPS_PROXY`, `no_proxy`/`NO_PROXY` as curl and containerd
read them. Only origin requests use them (`stream_request(..., origin=True)`); peer traffic never
does: a LAN peer behind a corporate proxy is reached directly or not at all.

The policy is process-wide, like the environment it stands in for: the daemon installs it at
start-up and on reload with `configure`.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from beiran.errors import ConfigError

#: (setting, environment variables in the order they are read: lower case first, as curl does)
ENV_NAMES = (("http", ("http_proxy", "HTTP_PROXY")), ("https", ("https_proxy", "HTTPS_PROXY")),
             ("no_proxy", ("no_proxy", "NO_PROXY")))


@dataclass
class ProxyConfig:
    """`[proxy]`: unset keys come from the environment; "" means "no proxy" even when it sets one."""

    http: str | None = None  # proxy for http:// origins, "http://[user:pass@]host:port"
    https: str | None = None  # proxy for https:// origins (CONNECT)
    no_proxy: str | list[str] | None = None  # hosts, .domains, IPs, CIDRs, "*"; comma-separated


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = None  # the Proxy-Authorization value, from the URL's user:password

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_proxy_url(value: str, where: str) -> Proxy | None:
    value = value.strip()
    if not value:
        return None
    if "://" not in value:
        value = "http://" + value  # curl's reading of "host:port"
    parts = urlsplit(value)
    if parts.scheme != "http":
        raise ConfigError(f"{where}: only http:// proxies are supported (https origins go through them "
                          f"with CONNECT), not {parts.scheme}://")
    try:
        port = parts.port or 80
    except ValueError:
        raise ConfigError(f"{where}: bad port in {value!r}") from None
    if not parts.hostname:
        raise ConfigError(f"{where}: no host in {value!r}")
    auth = None
    if parts.username is not None:
        raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(raw).decode()
    return Proxy(parts.hostname, port, auth)


def _no_proxy_entries(value: str | list[str] | None) -> list[str]:
    if not value:
        return []
    items = value if isinstance(value, list) else value.replace(" ", ",").split(",")
    return [i.strip().lower() for i in items if i.strip()]


def _bypass(entries: list[str], host: str, port: int) -> bool:
    """curl's NO_PROXY matching (host, domain suffix, leading dot, "*", IP) plus CIDRs, with an
    optional ":port" on an entry."""
    host = host.lower().strip("[]")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    for entry in entries:
        if entry == "*":
            return True
        want_port = None
        if entry.startswith("["):  # [::1]:8080
            entry, _, rest = entry[1:].partition("]")
            want_port = rest.lstrip(":") or None
        elif entry.count(":") == 1:
            entry, want_port = entry.split(":")
        if want_port and want_port != str(port):
            continue
        if addr is not None:
            try:
                if addr in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry = entry.lstrip("*").lstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


class ProxyPolicy:
    """Which proxy, if any, an origin URL goes through."""

    def __init__(self, http: Proxy | None = None, https: Proxy | None = None,
                 no_proxy: list[str] | None = None) -> None:
        self.http, self.https, self.no_proxy = http, https, list(no_proxy or [])

    @classmethod
    def from_config(cls, cfg: ProxyConfig) -> ProxyPolicy:
        return cls(parse_proxy_url(cfg.http or "", "proxy.http"),
                   parse_proxy_url(cfg.https or "", "proxy.https"), _no_proxy_entries(cfg.no_proxy))

    def for_url(self, scheme: str, host: str, port: int) -> Proxy | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or _bypass(self.no_proxy, host, port):
            return None
        return proxy

    def describe(self) -> str:
        if not (self.http or self.https):
            return "none"
        parts = [f"{k} via {p.netloc}" for k, p in (("http", self.http), ("https", self.https)) if p]
        return ", ".join(parts) + (f"; not for {','.join(self.no_proxy)}" if self.no_proxy else "")


def resolve(cfg: ProxyConfig, environ: dict[str, str]) -> ProxyConfig:
    """Fill the keys the config leaves unset from the environment, and check every value."""
    out = ProxyConfig(cfg.http, cfg.https, cfg.no_proxy)
    for key, names in ENV_NAMES:
        if getattr(out, key) is not None:
            continue
        for name in names:
            if environ.get(name):
                setattr(out, key, environ[name])
                if key != "no_proxy":
                    parse_proxy_url(environ[name], f"environment variable {name}")
                break
    for key in ("http", "https"):
        value = getattr(out, key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"config: proxy.{key} must be a string (a proxy URL)")
        parse_proxy_url(value or "", f"proxy.{key}")
    if out.no_proxy is not None and not isinstance(out.no_proxy, (str, list)):
        raise ConfigError("config: proxy.no_proxy must be a string or a list of hosts")
    return out


def masked(value: str | None) -> str | None:
    """A proxy URL for display: the password replaced."""
    if not value or "@" not in value:
        return value
    scheme, sep, rest = value.rpartition("://")
    userinfo, _, hostport = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{hostport}"


_policy = ProxyPolicy()


def configure(cfg: ProxyConfig) -> ProxyPolicy:
    """Install the process-wide policy (daemon start-up and reload)."""
    global _policy
    _policy = ProxyPolicy.from_config(cfg)
    return _policy


def policy() -> ProxyPolicy:
    return _policy
