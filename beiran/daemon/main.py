"""`beirand` / `beiran daemon`: start-up, listeners, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from beiran.config import Config, parse_hostport
from beiran.errors import BeiranError

if TYPE_CHECKING:
    import peewee

    from beiran.context import DaemonContext

log = logging.getLogger("beiran.daemon")
#: files the daemon makes are 0640 and directories 0750 whatever umask it inherits: the store holds
#: private layers, the database k8s grants
UMASK = 0o027
#: seconds peers and plugins get to stop at SIGTERM before the daemon closes its store and exits anyway
SHUTDOWN_GRACE = 1.5


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
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise BeiranError(f"another beiran daemon is already running on {self.path.parent}: stop it, or give "
                              "this one its own --data-dir (data_dir, BEIRAN_DATA_DIR)") from None
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
            raise BeiranError(f"a daemon is already answering on {path}: stop it, or give this one its own "
                              "--run-dir (run_dir, or socket)")
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
        finally:
            probe.close()
    return bind_unix_socket(str(path), mode=0o660)


def private_data_dir(path: Path) -> None:
    """Make the data dir (0750) or take other users' access away from an existing one."""
    path.mkdir(mode=0o750, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777
    if mode & 0o007:
        try:
            path.chmod(mode & ~0o007)
            log.info("data dir %s was open to every user (%o): now %o", path, mode, mode & ~0o007)
        except OSError as exc:
            log.warning("data dir %s is open to every user (%o) and cannot be changed: %s", path, mode, exc)


async def run(config: Config, reload_config: Callable[[], Config] | None = None) -> int:
    from tornado.netutil import bind_sockets

    from beiran import proxies, workers
    from beiran.daemon import notify
    from beiran.daemon.app import PlainHTTPServer, make_app
    from beiran.daemon.reload import reload_loop
    from beiran.listener import GuardedHTTPServer

    stop, hup = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup.set)  # a reload, handled once the daemon is up
    if _early_hup:
        hup.set()
    os.umask(UMASK)
    lock = DataDirLock(config.data_dir)
    try:
        private_data_dir(config.data_dir)
        lock.acquire()
    except OSError as exc:
        what = "" if str(exc.filename) == str(config.data_dir) else f" ({exc.filename})"
        raise BeiranError(f"cannot use data dir {config.data_dir}: {exc.strerror}{what}; give a directory this "
                          "user can write with --data-dir, data_dir or BEIRAN_DATA_DIR") from None
    proxies.configure(config.proxy)
    host, port = config.listen_host, config.listen_port
    try:
        tcp_socks = bind_sockets(port, address=None if host in ("0.0.0.0", "") else host)
    except OSError as exc:
        hint = ("another program (or another beiran daemon) listens there: stop it or choose another"
                if exc.errno == errno.EADDRINUSE else "choose an address of this machine with")
        raise BeiranError(f"cannot listen on {config.listen}: {exc.strerror}; {hint} --listen, listen or "
                          "BEIRAN_LISTEN") from None
    try:
        unix_sock = bind_unix(config.socket_path)
    except OSError as exc:
        raise BeiranError(f"cannot make the admin socket {config.socket_path}: {exc.strerror}; give a directory "
                          "this user can write with --run-dir or run_dir (or socket)") from None
    ctx, db = await build_services(config)
    app = make_app(ctx)
    # plugins start before the listeners accept, so a node that answers /info is fully up
    await ctx.plugins.start_all()
    tcp_server = PlainHTTPServer(app, max_body_size=64 << 20, limits=config.limits,
                                 on_refused=lambda ip: ctx.metrics.connections_refused.inc())
    tcp_server.add_sockets(tcp_socks)
    unix_server = GuardedHTTPServer(app, max_body_size=64 << 20, per_address=False)
    unix_server.add_socket(unix_sock)
    workers.prestart(ctx.io_executor, ctx.receive_executor)
    # said before the first await: a peer that dials in at once is logged online after this line,
    # never before it (peers.start() reads the node table, and a peer's hello may land meanwhile)
    log.info("beiran %s node %s listening on %s (peers reach it at %s) and %s; plugins: %s",
             ctx.identity.version, ctx.identity.uuid, config.listen, ctx.identity.url, config.socket_path,
             ", ".join(f"{r.name}[{r.status}]" for r in ctx.plugins.records.values()) or "none")
    await ctx.peers.start()
    if proxies.policy().describe() != "none":
        log.info("origin requests use the upstream proxy: %s", proxies.policy().describe())
    notify.ready(f"listening on {config.listen}")
    reloads = asyncio.ensure_future(reload_loop(ctx, reload_config or _no_reload, hup))
    await stop.wait()
    log.info("shutting down")
    notify.stopping()
    reloads.cancel()
    tcp_server.stop()
    unix_server.stop()
    try:
        await asyncio.wait_for(_stop_services(ctx), SHUTDOWN_GRACE)
    except TimeoutError:
        log.warning("peers and plugins did not stop within %.1fs; exiting anyway", SHUTDOWN_GRACE)
    await ctx.store.close()
    config.socket_path.unlink(missing_ok=True)
    ctx.db_executor.shutdown(wait=True)
    db.close()
    return 0


async def build_services(config: Config) -> tuple[DaemonContext, peewee.SqliteDatabase]:
    """The context with its services built in the order they need each other (identity, auth,
    metrics, plugins imported and their tables, availability, store, peers, fetcher, preheater),
    then the plugins' init. Each `ctx.<service>` is set here, once; nothing reads one earlier."""
    from beiran.context import DaemonContext
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

    ctx = DaemonContext(config=config)
    host, port = config.listen_host, config.listen_port
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
    ctx.uploads.on_refuse = ctx.metrics.peer_refused.labels("uploads").inc
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
    ctx.availability = Availability(config.limits.peer_max_blobs, config.limits.peer_max_blobs_total)
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
    return ctx, db


async def _stop_services(ctx: DaemonContext) -> None:
    await ctx.peers.stop()
    await asyncio.sleep(0.05)  # let goodbye messages leave
    await ctx.plugins.stop_all()


def _wire_availability(ctx: DaemonContext) -> None:
    """Local store changes become availability deltas for peers."""
    from beiran import events

    # restricted (private) blobs are never served to peers: not advertised either
    for digest, entry in ctx.store.entries.items():
        if not ctx.store.is_restricted(digest):
            ctx.availability.local_change("+", digest, entry.size)
    ctx.bus.on(events.BLOB_ADDED, lambda digest, size, **_: ctx.peers.local_change(
        "-" if ctx.store.is_restricted(digest) else "+", digest, size))
    ctx.bus.on(events.BLOB_REMOVED, lambda digest, size, **_: ctx.peers.local_change("-", digest, size))

    def progress(digest: str, size: int | None, state: str, **_: Any) -> None:
        if state == "started":
            ctx.peers.local_change("p", digest, size)
        elif state == "failed" and digest not in ctx.store.entries:
            ctx.peers.local_change("-", digest, size)
    ctx.bus.on(events.BLOB_PROGRESS, progress)


_early_hup: list[int] = []


def _no_reload() -> Config:
    raise BeiranError("this daemon was started without a way to re-read its config")


def serve(config: Config, reload_config: Callable[[], Config] | None = None) -> NoReturn:
    """Run the daemon; `reload_config` re-reads the config as at start-up (file, environment and
    flags) on SIGHUP."""
    setup_logging(config.log_level)
    signal.signal(signal.SIGHUP, lambda signum, _frame: _early_hup.append(signum))  # until the loop's own
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(run(config, reload_config))
    except BeiranError as exc:
        log.error("%s", exc.message)
        code = 1
    except KeyboardInterrupt:
        code = 0
    # The store and database are closed. Exit now: a worker thread blocked on a stalled peer or a
    # slow DNS answer would otherwise hold the interpreter's exit (it joins them) for its timeout.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    """`beirand`: the same as `beiran daemon`."""
    from beiran.cli.main import main as cli_main

    cli_main(["daemon", *sys.argv[1:]])
