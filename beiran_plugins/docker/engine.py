"""The local Docker engine, through the docker SDK: loading pulled images, listing the engine's
images, and following its events so images pulled by other means show up. Every SDK call is
blocking, so each runs in an executor; the event stream has its own (daemon) thread."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger("beiran.docker.engine")
logging.getLogger("docker").setLevel(logging.INFO)  # the SDK logs every config file lookup at debug
RETRY = 5.0


class Engine:
    def __init__(self, ctx: DaemonContext, host: str | None, follow: bool = True) -> None:
        self.ctx = ctx
        self.host = host  # None: DOCKER_HOST or the default socket
        self.follow = follow
        self.images: list[dict[str, Any]] = []
        self.reachable = False
        self.error = ""
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self._first: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self, timeout: int = 60) -> Any:
        import docker

        if self.host:
            return docker.DockerClient(base_url=self.host, timeout=timeout)
        return docker.from_env(timeout=timeout)

    def describe(self) -> str:
        return self.host or "DOCKER_HOST or the default socket"

    # -- listing ---------------------------------------------------------------------------------
    def _list(self) -> list[dict[str, Any]]:
        client = self._client(timeout=10)
        try:
            out = []
            for im in client.api.images():
                tags = [t for t in im.get("RepoTags") or [] if t != "<none>:<none>"]
                out.append({"id": im.get("Id", ""), "tags": tags,
                            "digests": im.get("RepoDigests") or [], "size": im.get("Size"),
                            "created": im.get("Created")})
            return out
        finally:
            client.close()

    async def refresh(self) -> list[dict[str, Any]]:
        try:
            self.images = await self.ctx.run_blocking(self._list)
            self.reachable, self.error = True, ""
        except Exception as exc:  # noqa: BLE001 - any SDK/connection failure means "not reachable"
            self.reachable, self.error, self.images = False, _short(exc), []
        return self.images

    # -- loading ---------------------------------------------------------------------------------
    def _load(self, chunks: Iterator[bytes]) -> list[str]:
        client = self._client(timeout=600)
        try:
            images = client.images.load(chunks)
            return [t for im in images for t in (im.tags or [im.id])]
        finally:
            client.close()

    async def load(self, chunks: Iterator[bytes]) -> list[str]:
        """Feed a docker-save archive to the engine; returns what it loaded. Raises if unreachable."""
        loaded = await self.ctx.run_blocking(self._load, chunks)
        await self.refresh()
        return loaded

    # -- events ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._first = asyncio.ensure_future(self.refresh())  # an unreachable engine must not delay start-up
        if self.follow:  # a daemon thread: a stuck event stream must never keep the process alive
            self._thread = threading.Thread(target=self._follow, name="beiran-docker-events", daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        """Blocking: stream the engine's image events; reconnect while the daemon runs."""
        while not self._stop.is_set():
            client = None
            try:
                client = self._client(timeout=None)  # type: ignore[arg-type]  # docker-py gives requests None: no timeout
                self._stream = client.events(decode=True, filters={"type": "image"})
                self._schedule_refresh()
                for event in self._stream:
                    if self._stop.is_set():
                        break
                    log.debug("engine event: %s %s", event.get("Action"), event.get("id", "")[:40])
                    self._schedule_refresh()
            except Exception as exc:  # noqa: BLE001 - engine away: try again later
                if not self._stop.is_set():
                    log.debug("engine events: %s", exc)
            finally:
                self._stream = None
                if client is not None:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001
                        pass
            self._stop.wait(RETRY)

    def _schedule_refresh(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.refresh()))

    async def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            try:
                await asyncio.wait_for(self.ctx.run_blocking(stream.close), 2)
            except Exception:  # noqa: BLE001
                pass


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
