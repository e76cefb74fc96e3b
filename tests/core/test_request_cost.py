"""What every answered request costs the daemon: the route's regex is tried only when the path
starts with the route's literal part, and a request's metric series are looked up once per
(plugin, status), still counted in the same `/metrics` series."""

from __future__ import annotations

import re
from typing import Any

import tornado.web
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.routing import PathMatches, Rule

from beiran import routing
from beiran.handlers import NotFoundHandler
from beiran.metrics import Metrics


class CountingMatches(PathMatches):
    """A route's path matcher that counts how often its regex was tried."""

    def __init__(self, pattern: str | re.Pattern[str]) -> None:
        super().__init__(pattern)
        self.tried = 0

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        self.tried += 1
        return super().match(request)


def _request(path: str) -> HTTPServerRequest:
    return HTTPServerRequest(start_line=RequestStartLine("GET", path, "HTTP/1.1"),
                             headers=HTTPHeaders({"Host": "127.0.0.1"}))


class Admin(tornado.web.RequestHandler):
    pass


class CatchAll(tornado.web.RequestHandler):
    pass


def test_a_route_whose_literal_part_the_path_lacks_is_not_tried():
    admin = [CountingMatches(p) for p in (r"/npm/-/beiran/info", r"/npm/-/beiran/peer/packument/(full|abbr)/([^/]+)")]
    catch_all = CountingMatches(r"/npm(?:/(.*))?")
    app = routing.Application([*(Rule(m, Admin) for m in admin), Rule(catch_all, CatchAll)],
                              default_handler_class=NotFoundHandler)
    for path in ("/npm/left-pad", "/npm/@scope%2fpkg", "/npm/-/ping", "/npm/left-pad/-/left-pad-1.0.0.tgz"):
        assert app.find_handler(_request(path)).handler_class is CatchAll, path
    assert [m.tried for m in admin] == [0, 0]
    assert catch_all.tried == 4
    # the routes whose literal part the path has are tried, in order, as before
    assert app.find_handler(_request("/npm/-/beiran/info")).handler_class is Admin
    assert app.find_handler(_request("/npm/-/beiran/peer/packument/full/x")).handler_class is Admin
    assert [m.tried for m in admin] == [1, 1]


def test_verbose_and_case_insensitive_patterns_are_tried_for_every_path():
    spaced = CountingMatches(re.compile(r"/np m/x", re.VERBOSE))
    app = routing.Application([Rule(spaced, Admin)], default_handler_class=NotFoundHandler)
    assert app.find_handler(_request("/npm/x")).handler_class is Admin
    assert spaced.tried == 1


def _samples(m: Metrics) -> dict[str, float]:
    return {k: v for k, v in m.snapshot().items() if k.startswith("beiran_http_request")}


def test_request_metrics_count_into_the_same_series():
    m = Metrics()
    for status in (200, 200, 404):
        m.observe_request("npm", status, 0.003)
    m.observe_request("core", 200, 2.0)
    got = _samples(m)
    assert got["beiran_http_requests_total{code=200}{plugin=npm}"] == 2
    assert got["beiran_http_requests_total{code=404}{plugin=npm}"] == 1
    assert got["beiran_http_requests_total{code=200}{plugin=core}"] == 1
    assert got["beiran_http_request_seconds_count{plugin=npm}"] == 3
    assert got["beiran_http_request_seconds_bucket{le=0.005}{plugin=npm}"] == 3
    assert got["beiran_http_request_seconds_bucket{le=1.0}{plugin=core}"] == 0
    assert got["beiran_http_request_seconds_sum{plugin=core}"] == 2.0
    text = m.render().decode()
    assert 'beiran_http_requests_total{code="200",plugin="npm"} 2.0' in text
    assert 'beiran_http_request_seconds_count{plugin="npm"} 3.0' in text
