"""Route dispatch by path prefix (beiran/routing.py) picks exactly the handler Tornado's own
rule-by-rule scan picks: same handler class, same path arguments, same handler kwargs (the
plugin), for every route of the core and of every installed plugin, and for paths no route takes."""

from __future__ import annotations

import importlib
import re
from types import SimpleNamespace
from typing import Any

import pytest
import tornado.web
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from beiran import routing
from beiran.daemon.app import all_routes, make_app
from beiran.handlers import NotFoundHandler
from beiran.plugin_loader import plugin_names

pytestmark = pytest.mark.each_plugin  # every installed plugin's routes are in the table

SAMPLE_ARGS = ["x", "full", "abbr", "sha256:" + "a" * 64, "a/b", "@scope%2fpkg", "", "-", "v2", "npm"]
#: paths that sit between routes: prefixes, near misses, empty segments, absolute URIs
ODD_PATHS = ["/", "", "*", "//", "/npm", "/npm/", "/npmx", "/npm//x", "/v2", "/v2/", "/v2x", "/v2//",
             "/blobs", "/blobs/", "/blobsx", "/blobs/stats/", "/ui", "/ui/", "/uix", "/ui/index.html",
             "/peer", "/peer/", "/peer/rpc/", "/peer/rpc/" + "a" * 40, "/peer/rpcx", "/nodes/", "/nodes/a/b",
             "/apt", "/apt/", "/docker", "/docker/images/x/info", "/k8s/images/", "/dns", "/zeroconf/x",
             "http://host/npm/x", "/%6Epm/x", "/NPM/x", "/info/", "/infox", "/metrics", "/-/x", "/npm/-/ping"]


def _plugin_routes() -> list[Any]:
    """Every installed plugin's routes as the loader registers them (with a `plugin` kwarg)."""
    out: list[Any] = []
    for name in plugin_names():
        try:
            api = importlib.import_module(f"beiran_plugins.{name}.api")
        except ModuleNotFoundError:
            continue
        for route in getattr(api, "ROUTES", []):
            out.append((route[0], route[1], {**(route[2] if len(route) > 2 else {}), "plugin": name}))
    return out


def _request(path: str) -> HTTPServerRequest:
    return HTTPServerRequest(start_line=RequestStartLine("GET", path, "HTTP/1.1"),
                             headers=HTTPHeaders({"Host": "127.0.0.1"}))


def _chosen(app: tornado.web.Application, path: str) -> tuple[Any, ...]:
    d: Any = app.find_handler(_request(path))
    return d.handler_class, d.handler_kwargs, d.path_args, d.path_kwargs


def _sample_paths(routes: list[Any]) -> list[str]:
    """For each route: its pattern filled with sample arguments, and near misses of each."""
    paths = list(ODD_PATHS)
    for route in routes:
        pattern = route[0].lstrip("^").rstrip("$")
        groups = re.compile(pattern).groups
        skeleton = re.sub(r"\([^()]*\)\??|\.\*|\.\+|/\?|\\", "%s", pattern) if groups or "*" in pattern else pattern
        for arg in SAMPLE_ARGS:
            try:
                base = skeleton % ((arg,) * skeleton.count("%s"))
            except (TypeError, ValueError):
                continue
            paths += [base, base + "/", base + "x", base[:-1], base + "/x/y", base.upper()]
    return list(dict.fromkeys(paths))


def _both(routes: list[Any]) -> tuple[tornado.web.Application, tornado.web.Application]:
    plain = tornado.web.Application(list(routes), default_handler_class=NotFoundHandler)
    indexed = routing.Application(list(routes), default_handler_class=NotFoundHandler)
    return plain, indexed


def test_every_route_of_the_daemon_goes_to_the_same_handler_as_tornados_scan():
    ctx = SimpleNamespace(plugins=SimpleNamespace(all_routes=_plugin_routes))
    routes = all_routes(ctx)  # type: ignore[arg-type]  # the route list reads only ctx.plugins
    plain, indexed = _both(routes)
    paths = _sample_paths(routes)
    assert len(paths) > 300
    matched = set()
    for path in paths:
        want = _chosen(plain, path)
        assert _chosen(indexed, path) == want, path
        matched.add(want[0])
    # the samples reach every handler of the table (else this test would prove little)
    assert {r[1] for r in routes} <= matched, {r[1].__name__ for r in routes} - {h.__name__ for h in matched}


def test_the_first_registered_route_wins_as_before_even_when_a_later_one_is_more_specific():
    class Broad(tornado.web.RequestHandler):
        pass

    class Narrow(tornado.web.RequestHandler):
        pass

    class Either(tornado.web.RequestHandler):
        pass

    routes = [(r"/a/(.*)", Broad), (r"/a/b", Narrow), (r"/a|/c/d", Either), (r"/v2/?", Narrow),
              tornado.web.url(re.compile(r"/CASE/(x)$", re.IGNORECASE), Either), (r"/e(?:/(.*))?", Broad),
              (r"/f[]|]g", Narrow), (r"(?i)/low", Broad)]
    plain, indexed = _both(routes)
    for path in ["/a/b", "/a/", "/a", "/c/d", "/v2", "/v2/", "/v2x", "/case/x", "/CASE/X", "/e", "/e/1",
                 "/ex", "/f]g", "/f|g", "/LOW", "/low", "/c"]:
        assert _chosen(indexed, path) == _chosen(plain, path), path
    assert _chosen(indexed, "/a/b")[0] is Broad
    assert _chosen(indexed, "/c/d")[0] is Either  # a top-level `|`: no literal prefix to rely on
    assert _chosen(indexed, "/case/x")[0] is Either  # case-insensitive: tried for every path


def test_routes_added_after_start_are_dispatched_too():
    class Late(tornado.web.RequestHandler):
        pass

    app = routing.Application([(r"/x", NotFoundHandler)], default_handler_class=NotFoundHandler)
    assert _chosen(app, "/late")[0] is NotFoundHandler
    app.wildcard_router.add_rules([(r"/late", Late)])
    assert _chosen(app, "/late")[0] is Late


def test_literal_prefixes():
    lp = routing.literal_prefix
    assert lp(r"/npm(?:/(.*))?") == "/npm"
    assert lp(r"/npm/-/beiran/peer/packument/(full|abbr)/([^/]+)") == "/npm/-/beiran/peer/packument/"
    assert lp(r"/v2/?") == "/v2"
    assert lp(r"/ab*") == "/a"
    assert lp(r"/ab{0,2}") == "/a"
    assert lp(r"/ab+") == "/a"
    assert lp(r"^/info$") == "/info"
    assert lp(r"/file\.json") == "/file"
    assert lp(r"/a|/b") == ""
    assert lp(r"/x[|]y") == "/x"
    assert lp(r"(?i)/x") == ""


def test_the_daemon_app_dispatches_by_prefix():
    ctx = SimpleNamespace(plugins=SimpleNamespace(all_routes=lambda: []))
    assert isinstance(make_app(ctx), routing.Application)  # type: ignore[arg-type]


def test_host_specific_handlers_added_later_are_dispatched_as_tornado_does():
    class OnHost(tornado.web.RequestHandler):
        pass

    app = routing.Application([(r"/x", NotFoundHandler)], default_handler_class=NotFoundHandler)
    app.add_handlers(r"127\.0\.0\.1", [(r"/x", OnHost)])
    assert _chosen(app, "/x")[0] is OnHost
