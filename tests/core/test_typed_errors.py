"""Errors are told apart by type, never by their text: an over-long upstream answer is
`ResponseTooLarge` (docker turns it into ManifestInvalid), a daemon's error answer reaches the CLI
as `DaemonError` with its status and code."""

from __future__ import annotations

import tornado.web
from tornado.testing import AsyncHTTPTestCase, gen_test

from beiran.errors import ResponseTooLarge, UpstreamError
from beiran.httpstream import stream_request


class ReadAllLimitTest(AsyncHTTPTestCase):
    def get_app(self) -> tornado.web.Application:
        class Big(tornado.web.RequestHandler):
            def get(self) -> None:
                self.finish(b"x" * 5000)

        return tornado.web.Application([(r"/big", Big)])

    @gen_test(timeout=10)
    async def test_an_answer_over_the_limit_is_response_too_large(self) -> None:
        url = self.get_url("/big")
        async with stream_request(url) as resp:
            try:
                await resp.read_all(1000)
            except ResponseTooLarge as exc:
                assert isinstance(exc, UpstreamError) and exc.code == "response_too_large"
            else:
                raise AssertionError("read past the limit")
        async with stream_request(url) as resp:
            assert await resp.read_all(5000) == b"x" * 5000  # at the limit: read whole


def test_a_daemon_error_answer_carries_its_status_and_code() -> None:
    import io
    import json

    from beiran.cli.client import DaemonClient
    from beiran.cli.errors import CLIError, DaemonError

    class Resp(io.BytesIO):
        status, reason = 404, "Not Found"

    body = json.dumps({"error": "not_found", "message": "no route for GET /dns/status"}).encode()
    try:
        DaemonClient._raise_for(Resp(body))  # a stand-in response: read(), status and reason
    except DaemonError as exc:
        assert isinstance(exc, CLIError)
        assert (exc.status, exc.code) == (404, "not_found")
        assert exc.message == "no route for GET /dns/status (HTTP 404)"
    else:
        raise AssertionError("no error raised")
