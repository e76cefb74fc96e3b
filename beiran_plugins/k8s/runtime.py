"""The node's container runtime, reached over its own CRI ImageService (containerd's socket).

Images must land where the runtime runs containers, so every list/status/remove/fsinfo and the final
pull go to the runtime; Beiran only makes sure the pull is served from the local store.
"""

from __future__ import annotations

import grpc

from beiran_plugins.k8s.proto import api_pb2 as pb
from beiran_plugins.k8s.proto import api_pb2_grpc
from beiran_plugins.k8s.status import from_runtime

# Longer than the channel's longest backoff (1 s, +20% jitter) with room for a loaded machine: a
# runtime that is back must be found within one call (kubelet's own CRI deadline is 2 minutes).
RECONNECT_WAIT = 5.0


class RuntimeClient:
    def __init__(self, endpoint: str, timeout: float = 30.0, pull_timeout: float = 600.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.pull_timeout = pull_timeout
        target = endpoint if "://" in endpoint else f"unix://{endpoint}"
        # No retry storm against a dead runtime: fail fast, kubelet retries with backoff itself.
        self.channel = grpc.aio.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ])
        self.stub = api_pb2_grpc.ImageServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, what: str, method, request, timeout: float | None = None):
        try:
            return await method(request, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise from_runtime(exc, self.endpoint, what) from None
            first = exc
        # The channel may still be backing off from an earlier outage of a runtime that is back:
        # one more try that waits (briefly) for a connection, so a restarted runtime is found at once.
        try:
            return await method(request, timeout=RECONNECT_WAIT, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise from_runtime(first, self.endpoint, what) from None
            raise from_runtime(exc, self.endpoint, what) from None

    @property
    def name(self) -> str:
        """What to call the runtime in messages."""
        return "containerd" if "containerd" in self.endpoint else "container runtime"

    def unreachable(self, details: str = "") -> str:
        """One line for "the runtime does not answer": where, and the last reason gRPC gave."""
        reason = details.rsplit(": ", 1)[-1].strip() if details else ""
        return f"{self.name} not reachable at {self.endpoint}" + (f" ({reason})" if reason and len(reason) < 80 else "")

    async def probe(self, timeout: float = 1.0) -> str | None:
        """None when the runtime answers a cheap call now; else why not, in one line."""
        try:
            await self.stub.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return self.unreachable(exc.details() or "")
            return f"{self.name} at {self.endpoint} answered ImageFsInfo with {exc.code().name}"
        return None

    async def list_images(self, request: pb.ListImagesRequest) -> pb.ListImagesResponse:
        return await self._call("ListImages", self.stub.ListImages, request)

    async def image_status(self, image: str, verbose: bool = False) -> pb.ImageStatusResponse:
        req = pb.ImageStatusRequest(image=pb.ImageSpec(image=image), verbose=verbose)
        return await self._call(f"ImageStatus {image}", self.stub.ImageStatus, req)

    async def pull_image(self, request: pb.PullImageRequest) -> pb.PullImageResponse:
        return await self._call(f"PullImage {request.image.image}", self.stub.PullImage, request,
                                timeout=self.pull_timeout)

    async def remove_image(self, request: pb.RemoveImageRequest) -> pb.RemoveImageResponse:
        return await self._call(f"RemoveImage {request.image.image}", self.stub.RemoveImage, request)

    async def image_fs_info(self) -> pb.ImageFsInfoResponse:
        return await self._call("ImageFsInfo", self.stub.ImageFsInfo, pb.ImageFsInfoRequest())
