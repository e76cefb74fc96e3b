"""`beirand` / `beiran daemon`: start-up, listeners, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beiran.config import Config, parse_hostport
from beiran.errors import BeiranError

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger("beiran.daemon")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    logging.getLogger("peewee").setLevel(logging.INFO)
    if level.lower() != "debug":
        logging.getLogger("tornado.general").setLevel(logging.ERROR)


class DataDirLock:
    """One daemon per data dir: an flock held for the daemon's life."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "beirand.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise BeiranError(f"another beiran daemon is already running on {self.path.parent}") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())


def bind_unix(path: Path) -> socket.socket:
    """Bind the admin socket (0660). A stale socket file from a crash is replaced; a live one is not."""
    from tornado.netutil import bind_unix_socket

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
            raise BeiranError(f"a daemon is already answering on {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
        finally:
            probe.close()
    return bind_unix_socket(str(path), mode=0o660)


async def run(config: Config) -> int:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    from beiran.context import DaemonContext
    from beiran.daemon.app import PlainHTTPServer, make_app
    from beiran.fetch.fetcher import Fetcher
    from beiran.fetch.origins import local_source_keys
    from beiran.identity import NodeIdentity, advertised_addresses, load_or_create_uuid
    from beiran.metrics import Metrics
    from beiran.models import CORE_MODELS
    from beiran.models.base import create_and_migrate, open_database
    from beiran.peer.auth import PeerAuth
    from beiran.peer.availability import Availability
    from beiran.peer.manager import PeerManager
    from beiran.plugin_loader import PluginManager
    from beiran.preheat import Preheater
    from beiran.store.blobstore import BlobStore

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(config.data_dir)
    lock.acquire()
    ctx = DaemonContext(config=config)
    host, port = config.listen_host, config.listen_port
    try:
        tcp_socks = bind_sockets(port, address=None if host in ("0.0.0.0", "") else host)
    except OSError as exc:
        raise BeiranError(f"cannot listen on {config.listen}: {exc.strerror}") from None
    unix_sock = bind_unix(config.socket_path)
    node_uuid = load_or_create_uuid(config.data_dir)
    addresses = advertised_addresses(host)
    if config.advertise:
        adv_host, port = parse_hostport(config.advertise, port)
        addresses = [adv_host, *(a for a in addresses if a != adv_host)]
    url_host = addresses[0]
    url = f"http://[{url_host}]:{port}" if ":" in url_host else f"http://{url_host}:{port}"
    ctx.identity = NodeIdentity(uuid=node_uuid, url=url, port=port, addresses=addresses,
                                started=time.time())
    ctx.auth = PeerAuth(config.cluster_token, node_uuid)
    ctx.metrics = Metrics()
    db = open_database(config.data_dir / "beiran.db")
    ctx.plugins = PluginManager(ctx)
    ctx.plugins.import_all()
    await ctx.run_db(create_and_migrate, CORE_MODELS)
    for rec in ctx.plugins.records.values():
        if rec.models and not rec.error:
            try:
                await ctx.run_db(create_and_migrate, rec.models)
            except Exception as exc:  # noqa: BLE001
                ctx.plugins.fail(rec, "schema", exc)
    ctx.availability = Availability()
    ctx.store = BlobStore(ctx, config.data_dir / "blobs")
    await ctx.store.open()
    ctx.peers = PeerManager(ctx, ctx.availability)
    ctx.fetcher = Fetcher(ctx)
    ctx.preheater = Preheater(ctx)
    ctx.metrics.bind(ctx)
    _wire_availability(ctx)
    await ctx.plugins.init_all()
    ctx.identity.plugins = local_source_keys(ctx) + [
        p for p in ctx.plugins.enabled_names() if p not in local_source_keys(ctx)]
    app = make_app(ctx)
    # plugins start before the listeners accept, so a node that answers /info is fully up
    await ctx.plugins.start_all()
    tcp_server = PlainHTTPServer(app, max_body_size=64 << 20, idle_connection_timeout=300)
    tcp_server.add_sockets(tcp_socks)
    unix_server = HTTPServer(app, max_body_size=64 << 20)
    unix_server.add_socket(unix_sock)
    await ctx.peers.start()
    log.info("beiran %s node %s listening on %s (peers reach it at %s) and %s; plugins: %s",
             ctx.identity.version, node_uuid, config.listen, url, config.socket_path,
             ", ".join(f"{r.name}[{r.status}]" for r in ctx.plugins.records.values()) or "none")
    await stop.wait()
    log.info("shutting down")
    tcp_server.stop()
    unix_server.stop()
    await ctx.peers.stop()
    await asyncio.sleep(0.05)  # let goodbye messages leave
    await ctx.plugins.stop_all()
    await ctx.store.close()
    config.socket_path.unlink(missing_ok=True)
    ctx.db_executor.shutdown(wait=True)
    db.close()
    return 0


def _wire_availability(ctx: DaemonContext) -> None:
    """Local store changes become availability deltas for peers."""
    from beiran import events

    for digest, entry in ctx.store.entries.items():
        ctx.availability.local_change("+", digest, entry.size)
    ctx.bus.on(events.BLOB_ADDED, lambda digest, size, **_: ctx.peers.local_change("+", digest, size))
    ctx.bus.on(events.BLOB_REMOVED, lambda digest, size, **_: ctx.peers.local_change("-", digest, size))

    def progress(digest: str, size: int | None, state: str, **_: Any) -> None:
        if state == "started":
            ctx.peers.local_change("p", digest, size)
        elif state == "failed" and digest not in ctx.store.entries:
            ctx.peers.local_change("-", digest, size)
    ctx.bus.on(events.BLOB_PROGRESS, progress)


def serve(config: Config) -> int:
    setup_logging(config.log_level)
    try:
        return asyncio.run(run(config))
    except BeiranError as exc:
        log.error("%s", exc.message)
        return 1
    except KeyboardInterrupt:
        return 0


def main() -> None:
    """`beirand`: the same as `beiran daemon`."""
    from beiran.cli.main import main as cli_main

    cli_main(["daemon", *sys.argv[1:]])
