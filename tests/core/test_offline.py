"""beiran/offline.py in-process: the agreement rule, and asking peers (real HTTP on loopback) with
their redirects, oversized, slow and malformed answers refused."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
import tornado.web
from tornado.netutil import bind_sockets
from tornado.testing import AsyncHTTPTestCase, gen_test

from beiran import offline
from beiran.config import Config, load_config
from beiran.errors import ConfigError
from beiran.metrics import Metrics

GOOD = {"digest": "sha256:" + "a" * 64}


def test_a_value_needs_the_quorum_and_a_strict_majority_of_those_that_answered():
    def verdict(votes: dict[str, str], quorum: int = 2) -> str | None:
        return offline.agree({p: {"k": v} for p, v in votes.items()}, quorum)["k"].value

    assert verdict({"a": "x", "b": "x", "c": "evil"}) == "x"
    assert verdict({"a": "evil"}) is None  # one peer alone, whatever it claims
    assert verdict({"a": "x", "b": "evil"}) is None
    assert verdict({"a": "x", "b": "x", "c": "y", "d": "y"}) is None  # a tie is no majority
    assert verdict({"a": "x", "b": "x", "c": "y"}, quorum=3) is None
    assert verdict({"a": "x"}, quorum=1) is None  # never below 2
    v = offline.agree({"b": {"k": "x"}, "a": {"k": "x"}, "c": {"k": "y"}}, 2)["k"]
    assert v.agreed == ("a", "b") and v.answered == 3 and v.counts == (("x", 2), ("y", 1))
    both = offline.agree({"a": {"k1": "x", "k2": "p"}, "b": {"k1": "x", "k2": "q"}}, 2)
    assert both["k1"].value == "x" and both["k2"].value is None  # keys are decided one by one
    assert offline.header_value(offline.AGREED, ["bbbbbbbb-1", "aaaaaaaa-2"]) == "agreed; peers=aaaaaaaa,bbbbbbbb"
    assert offline.header_value(offline.OWN) == "own"


class _Peers:
    def __init__(self, bases: dict[str, str], plugins: dict[str, list[str]]) -> None:
        self.bases, self.plugins = bases, plugins

    async def reachable(self) -> list[str]:
        return list(self.bases)

    async def plugins_of(self, node: str) -> tuple[str, ...]:
        return tuple(self.plugins.get(node, ["docker"]))

    def url_of(self, node: str) -> str:
        return self.bases[node]


class AskPeersTest(AsyncHTTPTestCase):
    """Each fake peer on its own loopback address (127.0.0.2...), all served by one test app."""

    def setUp(self) -> None:
        super().setUp()
        for i in range(2, 2 + 24):
            self.http_server.add_sockets(bind_sockets(self.get_http_port(), f"127.0.0.{i}"))

    def get_app(self) -> tornado.web.Application:
        self.hits: list[str] = []
        test = self

        class Answer(tornado.web.RequestHandler):
            async def get(self, peer: str) -> None:
                test.hits.append(peer)
                if peer == "redirect":
                    self.redirect("/elsewhere/docker/tags")
                elif peer == "big":
                    self.finish(json.dumps({**GOOD, "pad": "x" * 5000}))
                elif peer == "slow":
                    await asyncio.sleep(3)
                    self.finish(json.dumps(GOOD))
                elif peer == "missing":
                    self.send_error(404)
                elif peer == "garbage":
                    self.finish(b"{not json")
                else:
                    self.finish(json.dumps(GOOD))
        return tornado.web.Application([(r"/(\w+)/docker/tags", Answer)])

    def _answers(self, names: list[str], plugins: dict[str, list[str]] | None = None
                 ) -> tuple[offline.OfflineAnswers, Metrics]:
        config = Config()
        config.offline.timeout = 0.5
        metrics = Metrics()

        async def run_blocking(fn: Any, *args: Any) -> Any:
            return fn(*args)
        ctx = SimpleNamespace(config=config, metrics=metrics, run_blocking=run_blocking,
                              auth=SimpleNamespace(headers=lambda method, path: {}),
                              peers=_Peers({n: self._url(i, n) for i, n in enumerate(names)}, plugins or {}))
        return offline.OfflineAnswers(ctx, "docker"), metrics  # type: ignore[arg-type]

    def _url(self, i: int, name: str) -> str:
        host = "127.0.0.2" if name.startswith("samehost") else f"127.0.0.{3 + i}"
        return f"http://{host}:{self.get_http_port()}/{name}"

    @gen_test(timeout=10)
    async def test_only_whole_small_prompt_answers_from_peers_running_the_plugin_count(self) -> None:
        names = ["good1", "good2", "redirect", "big", "slow", "missing", "garbage", "other", "samehost1", "samehost2"]
        answers, _ = self._answers(names, {"other": ["npm"]})
        got = await answers.ask("/docker/tags?tag=v1", lambda body: json.loads(body)["digest"], 4096)
        assert got == {"good1": GOOD["digest"], "good2": GOOD["digest"], "samehost1": GOOD["digest"]}
        assert "elsewhere" not in self.hits and "other" not in self.hits  # no redirect followed
        assert "samehost2" not in self.hits  # two node UUIDs on one host are one voice

    @gen_test(timeout=10)
    async def test_at_most_max_peers_are_asked(self) -> None:
        answers, _ = self._answers([f"good{i}" for i in range(20)])
        answers.ctx.config.offline.max_peers = 3
        got = await answers.ask("/docker/tags", lambda body: body, 4096)
        assert len(got) == 3 and len(self.hits) == 3

    def test_each_answer_is_one_warning_line_and_a_counter_sample(self) -> None:
        answers, metrics = self._answers([])
        with self.assertLogs("beiran.offline", logging.WARNING) as logs:
            answers.report(offline.AGREED, "reg/test/img:v1", "sha256:abc", ["bbbbbbbb-x", "aaaaaaaa-y"])
            answers.report(offline.REFUSED, "reg/test/img:v1")
        assert len(logs.records) == 2
        assert logs.output[0].endswith("offline answer (docker): answering reg/test/img:v1 with sha256:abc: "
                                       "agreed by 2 peers (aaaaaaaa, bbbbbbbb)")
        assert "not answering reg/test/img:v1: peers do not agree" in logs.output[1]
        snap = metrics.snapshot()
        assert snap["beiran_offline_answers_total{outcome=agreed}{plugin=docker}"] == 1
        assert snap["beiran_offline_answers_total{outcome=refused}{plugin=docker}"] == 1


def test_a_quorum_below_two_is_a_config_error(tmp_path):
    cfg = load_config(environ={"BEIRAN_OFFLINE__QUORUM": "3", "BEIRAN_DATA_DIR": str(tmp_path)})
    assert cfg.offline.quorum == 3 and cfg.offline.max_peers == 8
    for bad in ("1", "true", "\"2\""):
        with pytest.raises(ConfigError, match=r"offline\.quorum must be an integer of at least 2"):
            load_config(environ={"BEIRAN_OFFLINE__QUORUM": bad, "BEIRAN_DATA_DIR": str(tmp_path)})
