"""Base request handlers for core and plugins.

Errors are raised as typed `BeiranError`s (or Tornado's HTTPError) anywhere in a handler and
rendered once, in `write_error`, as one JSON body shape. Who may call a route is declared on the
handler (`access`, see `beiran.access`) and checked once, in `prepare`.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPServerRequest

from beiran.access import Access, admit
from beiran.errors import BeiranError, Forbidden, InvalidJSON, InvalidRange, PayloadTooLarge, UnknownCommand

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger("beiran.http")
DEFAULT_MAX_JSON_BODY = 1 << 20


_Command = TypeVar("_Command", bound=Callable[..., Any])


@overload
def rpc_command(fn: _Command) -> _Command: ...
@overload
def rpc_command(fn: None = None, *, admin: bool = True) -> Callable[[_Command], _Command]: ...
def rpc_command(fn: _Command | None = None, *, admin: bool = True) -> Any:
    """Mark a handler method as an RPC command (`POST ...?cmd=<name>`). Admin by default."""
    def mark(f: _Command) -> _Command:
        f._rpc_admin = admin  # type: ignore[attr-defined]  # a function attribute: the mark itself
        return f
    return mark(fn) if fn is not None else mark


class BaseHandler(tornado.web.RequestHandler):
    #: who may call this route besides the unix socket; a handler that says nothing is admin-only
    access: Access = Access.ADMIN
    #: per HTTP method, where it differs (e.g. {"DELETE": Access.ADMIN})
    method_access: dict[str, Access] = {}
    #: how prepare() let this request in
    admitted: Access | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        legacy = {"local_only", "peer_auth", "clients_only", "admin_methods"} & set(vars(cls))
        if legacy:
            raise TypeError(f"{cls.__name__}: declare `access` instead of {', '.join(sorted(legacy))}")

    def initialize(self, plugin: Any = None, **kwargs: Any) -> None:
        self.plugin = plugin

    @property
    def ctx(self) -> DaemonContext:
        ctx: DaemonContext = self.application.settings["ctx"]
        return ctx

    def http_connection(self) -> HTTP1Connection:
        return http_connection(self.request)

    def is_unix_socket(self) -> bool:
        return getattr(self.http_connection().context, "address_family", None) == socket.AF_UNIX

    def prepare(self) -> None:
        self.admitted = admit(self, self.method_access.get(self.request.method or "", self.access))

    def set_default_headers(self) -> None:
        self.set_header("Server", "beiran")

    # -- errors --------------------------------------------------------------------------------
    def error_body(self, status: int, exc: BaseException | None) -> dict[str, Any]:
        """The JSON body for an error; subclasses (OCI, npm) override the shape, not the logic."""
        if isinstance(exc, BeiranError):
            return exc.to_dict()
        if isinstance(exc, tornado.web.HTTPError):
            return {"error": _code_for(status), "message": exc.log_message or self._reason}
        if status >= 500:
            return {"error": "internal_error", "message": "internal error (see the daemon log)"}
        return {"error": _code_for(status), "message": self._reason}

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, BeiranError):
            status_code = exc.status
            self.set_status(status_code)
            if exc.status == 401:
                self.set_header("WWW-Authenticate", 'Beiran realm="cluster"')
        body = self.error_body(status_code, exc)
        self.clear_header("Content-Range")
        if isinstance(exc, InvalidRange) and exc.details.get("size") is not None:
            self.set_header("Content-Range", f"bytes */{exc.details['size']}")
        if self.request.method == "HEAD":
            self.finish()
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, BeiranError):
            level = logging.WARNING if value.status >= 500 else logging.INFO
            log.log(level, "%s %s -> %d %s", self.request.method, self.request.path,
                    value.status, value.message)
        elif isinstance(value, tornado.web.HTTPError):
            log.info("%s %s -> %d %s", self.request.method, self.request.path, value.status_code,
                     value.log_message or "")
        else:
            super().log_exception(typ, value, tb)

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))


def http_connection(request: HTTPServerRequest) -> HTTP1Connection:
    """The connection a request came on (Tornado types it as the abstract interface)."""
    conn = request.connection
    if not isinstance(conn, HTTP1Connection):
        raise TypeError(f"{type(conn).__name__} is not an HTTP/1 connection")
    return conn


def _code_for(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
            405: "method_not_allowed", 413: "payload_too_large"}.get(status, "error")


@tornado.web.stream_request_body
class JSONEndpoint(BaseHandler):
    """JSON in, JSON out, with a body-size limit enforced before the body is read."""

    max_body_size: int = DEFAULT_MAX_JSON_BODY

    def prepare(self) -> None:
        super().prepare()
        self._body_chunks: list[bytes] = []
        self._body_len = 0
        # An oversized body is read and dropped (up to the server's hard cap) so the client gets a
        # clean 413 instead of a broken pipe; it is refused when the handler asks for the body.
        self._too_large = False
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_body_size:
            self._too_large = True

    def data_received(self, chunk: bytes) -> None:
        self._body_len += len(chunk)
        if self._body_len > self.max_body_size:
            self._too_large = True
            self._body_chunks = []
        if not self._too_large:
            self._body_chunks.append(chunk)

    @property
    def body(self) -> bytes:
        if self._too_large:
            raise PayloadTooLarge(f"request body of {self._body_len} bytes exceeds the limit of "
                                  f"{self.max_body_size}")
        body = b"".join(self._body_chunks)
        if self.admitted == Access.PEER:
            self.ctx.auth.check_body(self.request, body)  # streamed: checked once it is all here
        return body

    def json_body(self, default: Any = None) -> Any:
        raw = self.body
        if not raw.strip():
            return {} if default is None else default
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidJSON(f"request body is not valid JSON: {exc}") from None

    def json_object(self) -> dict[str, Any]:
        data = self.json_body()
        if not isinstance(data, dict):
            raise InvalidJSON("request body must be a JSON object")
        return data


class RPCEndpoint(JSONEndpoint):
    """`POST /path?cmd=NAME`: dispatches to methods marked with `@rpc_command`."""

    @classmethod
    def commands(cls) -> dict[str, Callable[..., Any]]:
        return {name: getattr(cls, name) for name in dir(cls)
                if hasattr(getattr(cls, name, None), "_rpc_admin")}

    async def post(self, *args: str) -> None:
        if self._too_large:
            self.body  # noqa: B018 - raises PayloadTooLarge
        cmd = self.get_query_argument("cmd", None)
        commands = self.commands()
        if not cmd or cmd not in commands:
            raise UnknownCommand(f"unknown cmd {cmd!r}; available: {', '.join(sorted(commands))}")
        method = commands[cmd]
        if getattr(method, "_rpc_admin", True) and not self.is_unix_socket():
            raise Forbidden("admin operations are accepted only on the local unix socket")
        result = await method(self, *args)
        if not self._finished:
            self.write_json(result if result is not None else {"ok": True})


class NotFoundHandler(BaseHandler):
    """Unknown routes get the same JSON error shape as everything else."""

    access = Access.PUBLIC

    def prepare(self) -> None:
        from beiran.errors import NotFound

        raise NotFound(f"no route for {self.request.method} {self.request.path}")
