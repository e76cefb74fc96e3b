"""The CRI `runtime.v1.ImageService` kubelet talks to: a grpc.aio server on a unix socket, running on
the daemon's asyncio loop. Requests are checked here, then served by the runtime (list, status,
remove, fsinfo) or by the pull flow; every failure leaves as a gRPC status with a clear message."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from beiran.errors import BeiranError
from beiran_plugins.k8s.proto import api_pb2 as pb
from beiran_plugins.k8s.status import CRIError, from_beiran

if TYPE_CHECKING:
    from beiran_plugins.k8s.plugin import K8sPlugin

log = logging.getLogger("beiran.k8s")
SERVICE = "runtime.v1.ImageService"
_IMAGE_ID = re.compile(r"^(?:sha256:)?[0-9a-f]{64}$")


class _Malformed:
    """Stands for a request whose bytes did not parse, so the handler can answer INVALID_ARGUMENT
    (a raising deserializer would make grpc answer INTERNAL)."""

    def __init__(self, kind: str, error: str) -> None:
        self.kind, self.error = kind, error


def _safe_parser(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return _Malformed(cls.DESCRIPTOR.name, str(exc) or type(exc).__name__)
    return parse


def check_image(value: str, what: str = "image") -> str:
    """An ImageSpec.image: an image ID, or a reference in the Docker grammar; INVALID_ARGUMENT else."""
    from beiran_plugins.docker.reference import parse_reference

    if _IMAGE_ID.match(value or ""):
        return value
    try:
        parse_reference(value)
    except BeiranError as exc:
        raise CRIError(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {exc.message}") from None
    return value


def _names(*images: str) -> set[str]:
    """Image names in their normalized form (`nginx` and `docker.io/library/nginx:latest` are one)."""
    from beiran_plugins.docker.reference import parse_reference

    out = set()
    for image in images:
        out.add(image)
        if not _IMAGE_ID.match(image):
            try:
                out.add(str(parse_reference(image)))
            except BeiranError:
                pass
    return out


class ImageService:
    """The handlers; `self.plugin` holds the runtime client, the pull flow and the access policy."""

    def __init__(self, plugin: K8sPlugin) -> None:
        self.plugin = plugin

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "ListImages": (self.list_images, pb.ListImagesRequest, pb.ListImagesResponse),
            "ImageStatus": (self.image_status, pb.ImageStatusRequest, pb.ImageStatusResponse),
            "PullImage": (self.pull_image, pb.PullImageRequest, pb.PullImageResponse),
            "RemoveImage": (self.remove_image, pb.RemoveImageRequest, pb.RemoveImageResponse),
            "ImageFsInfo": (self.image_fs_info, pb.ImageFsInfoRequest, pb.ImageFsInfoResponse),
        }
        return grpc.method_handlers_generic_handler(SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(self._wrap(name, fn), request_deserializer=_safe_parser(req),
                                                      response_serializer=resp.SerializeToString)
            for name, (fn, req, resp) in methods.items()})

    def _wrap(self, name: str, fn: Callable[[Any], Awaitable[Any]]) -> Callable:
        metrics = self.plugin.counts
        prom = self.plugin.cri_metrics

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metrics[name] = metrics.get(name, 0) + 1
            started = time.monotonic()
            try:
                if isinstance(request, _Malformed):
                    raise CRIError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"malformed {request.kind}: the request bytes are not a valid protobuf "
                                   f"message ({request.error})")
                answer = await fn(request)
                prom.observe(name, "OK", time.monotonic() - started)
                return answer
            except CRIError as exc:
                err = exc
            except BeiranError as exc:
                err = from_beiran(exc)
            except Exception as exc:
                log.exception("CRI %s failed", name)
                err = CRIError(grpc.StatusCode.INTERNAL, f"internal error in Beiran's CRI service during {name}: "
                                                         f"{type(exc).__name__}: {exc}")
            prom.observe(name, err.code.name, time.monotonic() - started)
            log.info("CRI %s -> %s: %s", name, err.code.name, err.message)
            metrics[f"{name}.{err.code.name}"] = metrics.get(f"{name}.{err.code.name}", 0) + 1
            await context.abort(err.code, err.message)
        return call

    # -- the five methods ------------------------------------------------------------------------
    async def list_images(self, req: pb.ListImagesRequest) -> pb.ListImagesResponse:
        wanted = None
        if req.HasField("filter") and req.filter.image.image:
            wanted = _names(check_image(req.filter.image.image, "filter image"))
        resp = await self.plugin.runtime.list_images(req)
        if wanted:
            # Some runtimes (containerd 1.6) ignore the filter: apply it here, the same way for all.
            keep = [im for im in resp.images if wanted & ({im.id} | _names(*im.repo_tags, *im.repo_digests))]
            del resp.images[:]
            resp.images.extend(keep)
        return resp

    async def image_status(self, req: pb.ImageStatusRequest) -> pb.ImageStatusResponse:
        image = check_image(req.image.image)
        resp = await self.plugin.runtime.image_status(image, req.verbose)
        if req.verbose and resp.HasField("image"):
            resp.info["beiran"] = json.dumps(await self.plugin.beiran_info(resp.image), sort_keys=True)
        return resp

    async def pull_image(self, req: pb.PullImageRequest) -> pb.PullImageResponse:
        check_image(req.image.image)
        if _IMAGE_ID.match(req.image.image):
            raise CRIError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"image: cannot pull {req.image.image!r}: an image ID is not a reference")
        return await self.plugin.puller.pull(req)

    async def remove_image(self, req: pb.RemoveImageRequest) -> pb.RemoveImageResponse:
        image = check_image(req.image.image)
        resp = await self.plugin.runtime.remove_image(req)
        await self.plugin.forget(image)
        return resp

    async def image_fs_info(self, req: pb.ImageFsInfoRequest) -> pb.ImageFsInfoResponse:
        return await self.plugin.runtime.image_fs_info()


class CRIServer:
    """Owns the grpc.aio server and its socket file."""

    def __init__(self, service: ImageService, path: Path) -> None:
        self.service = service
        self.path = path
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        _claim_socket(self.path)
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", 4 << 20)])
        self.server.add_generic_rpc_handlers((self.service.handler(),))
        if self.server.add_insecure_port(f"unix://{self.path}") == 0:
            raise BeiranError(f"cannot listen on {self.path}")
        await self.server.start()
        os.chmod(self.path, 0o660)
        log.info("CRI image service listening on %s", self.path)

    async def stop(self, grace: float = 2.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        self.path.unlink(missing_ok=True)


def _claim_socket(path: Path) -> None:
    """Replace a stale socket file left by a crash; refuse to steal one something still answers on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(str(path)) > 100:
        raise BeiranError(f"[plugins.k8s] socket path {path} is too long for a unix socket")
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(path))
        raise BeiranError(f"something already answers on {path}")
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
    finally:
        probe.close()
