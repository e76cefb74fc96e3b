"""SIGHUP (`systemctl reload beiran`): re-read the config and apply what a running daemon can change.

Live: peers (added ones dialed, removed ones dropped, the others' connections kept), log level,
client CIDRs, `[origins]`, `[proxy]`, `[store]` and `[fetch]` (read at each use), and a plugin's
section when the plugin can apply it (`BasePlugin.reconfigure`). Anything else (listen address, data
dir, token...) is logged as needing a restart and keeps its running value, so the daemon's view of
itself stays true. A config that does not load is logged and the running one kept whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from beiran import proxies
from beiran.config import Config
from beiran.daemon import notify
from beiran.errors import BeiranError

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger("beiran.daemon")

#: applied as they are: everything reads them at each use
LIVE = ("client_cidrs", "origins", "proxy", "store", "fetch", "offline")
#: settled at start-up (sockets bound, identity and auth made, connections' timers set)
RESTART = ("data_dir", "run_dir", "listen", "advertise", "socket", "cluster_token", "heartbeat_interval",
           "heartbeat_timeout", "testing", "peer_cidrs", "limits", "cluster")


def set_log_level(level: str) -> None:
    logging.getLogger().setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("tornado.general").setLevel(logging.NOTSET if level.lower() == "debug" else logging.ERROR)


async def reload_loop(ctx: DaemonContext, load: Callable[[], Config], hup: asyncio.Event) -> None:
    """One reload per SIGHUP (several signals during a reload make one more), never two at once."""
    while True:
        await hup.wait()
        hup.clear()
        notify.reloading()
        try:
            await reload(ctx, load)
        except Exception:
            log.exception("reload failed; the running configuration is kept")
        notify.notify("READY=1", "STATUS=running")


async def reload(ctx: DaemonContext, load: Callable[[], Config]) -> list[str]:
    """Apply the re-read config to `ctx`; returns the settings that changed and were applied."""
    old = ctx.config
    try:
        new = await asyncio.get_running_loop().run_in_executor(None, load)
    except BeiranError as exc:
        log.error("reload: %s; the running configuration is kept", exc.message)
        return []
    applied: list[str] = []
    for name in RESTART:
        if getattr(new, name) != getattr(old, name) and not (name == "socket" and new.socket_path == old.socket_path):
            log.warning("reload: %s changed (%r -> %r): needs a restart to take effect",
                        name, _show(name, getattr(old, name)), _show(name, getattr(new, name)))
    if new.log_level.lower() != old.log_level.lower():
        set_log_level(new.log_level)
        old.log_level = new.log_level
        applied.append("log_level")
    for name in LIVE:
        if getattr(new, name) != getattr(old, name):
            setattr(old, name, getattr(new, name))
            applied.append(name)
    if "proxy" in applied:
        log.info("reload: origin requests now use the upstream proxy: %s", proxies.configure(old.proxy).describe())
    if new.peers != old.peers:
        _apply_peers(ctx, old.peers, new.peers)
        old.peers = list(new.peers)
        applied.append("peers")
    applied += await _apply_plugins(ctx, new)
    old.source_file = new.source_file
    log.info("reloaded %s: %s", new.source_file or "configuration", ", ".join(applied) or "nothing changed")
    return applied


def _show(name: str, value: Any) -> Any:
    return "***" if name == "cluster_token" and value else str(value) if value is not None else None


def _apply_peers(ctx: DaemonContext, before: list[str], after: list[str]) -> None:
    for url in before:
        if url not in after:
            log.info("reload: peer %s removed", url)
            ctx.peers.vanished(url, via="static")
    for url in after:
        if url not in before:
            log.info("reload: peer %s added", url)
            ctx.peers.discovered(url, via="static")


async def _apply_plugins(ctx: DaemonContext, new: Config) -> list[str]:
    """A changed `[plugins.<name>]` goes to that plugin's `reconfigure`; a plugin that cannot take it
    live (or is switched on or off) keeps its running section and the change waits for a restart."""
    applied: list[str] = []
    old = ctx.config
    for name in sorted(set(old.plugins) | set(new.plugins)):
        before, after = old.plugin_section(name), new.plugin_section(name)
        if before == after:
            continue
        rec = ctx.plugins.records.get(name)
        if rec is None:
            log.warning("reload: [plugins.%s] changed, but no plugin %s is installed", name, name)
            old.plugins[name] = after
            continue
        if rec.instance is None or rec.error or old.plugin_enabled(name) != new.plugin_enabled(name):
            log.warning("reload: [plugins.%s] changed: needs a restart to take effect", name)
            continue
        try:
            taken = await rec.instance.reconfigure(after)
        except BeiranError as exc:
            log.error("reload: [plugins.%s]: %s; its running settings are kept", name, exc.message)
            continue
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not stop the reload
            log.error("reload: [plugins.%s]: %s: %s; its running settings are kept", name, type(exc).__name__, exc)
            continue
        if taken:
            old.plugins[name] = after
            applied.append(f"plugins.{name}")
        else:
            log.warning("reload: [plugins.%s] changed: this plugin applies settings at start-up only; "
                        "needs a restart to take effect", name)
    return applied
