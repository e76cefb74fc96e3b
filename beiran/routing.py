"""Route dispatch by path prefix: the same first match as Tornado's rule-by-rule scan, without
trying every rule's regex on every request.

Tornado's `Application` tries each route's regex in order until one matches; with the core's,
every plugin's and the console's routes that is dozens of regexes per request, and a hot route
registered last (npm's `/npm/...` catch-all) pays for all of them. Each route's pattern starts with
a literal part (`/npm/-/beiran/info`, `/v2`, `/blobs/`); a path can only match routes whose literal
part it starts with. Which routes those are depends only on the path's first segment, so the
candidates are worked out once per first segment and kept. The candidates keep their registration
order, so the route chosen, its arguments and therefore access control are exactly what the full
scan would give. Within them, a rule whose literal part the path does not start with is skipped
without its regex (`/npm/x` never tries the six `/npm/-/beiran/...` routes before npm's catch-all).
"""

from __future__ import annotations

import re
from typing import Any

import tornado.web
from tornado.httputil import HTTPMessageDelegate, HTTPServerRequest
from tornado.routing import PathMatches, Rule

#: characters that end a pattern's literal start
_SPECIAL = frozenset("\\.^$*+?{}[]|()")
#: quantifiers that make the character before them optional (or repeatable: kept out to be safe)
_QUANTIFIERS = frozenset("*+?{")
#: first segments whose candidate lists are kept (paths come from clients: the cache is bounded)
MAX_CACHED_SEGMENTS = 512
MAX_CACHED_SEGMENT_LEN = 64


def literal_prefix(pattern: str) -> str:
    """What every path matching `pattern` (with `re.match`, as Tornado does) starts with; "" when
    that cannot be told from the pattern."""
    if _top_level_alternation(pattern):
        return ""
    i = 1 if pattern.startswith("^") else 0
    out: list[str] = []
    while i < len(pattern) and pattern[i] not in _SPECIAL:
        out.append(pattern[i])
        i += 1
    if i < len(pattern) and pattern[i] in _QUANTIFIERS and out:
        out.pop()  # `/v2/?`: the character before a quantifier may be absent
    return "".join(out)


def _top_level_alternation(pattern: str) -> bool:
    """True if `pattern` has a `|` outside every group (`/a|/b`): no common literal start."""
    depth, i, in_class = 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "^":
                i += 1
            if pattern[i + 1:i + 2] == "]":
                i += 1  # `[]...]`, `[^]...]`: a leading `]` is a literal inside the class
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return True
        i += 1
    return False


def _rule_prefix(rule: Rule) -> str:
    matcher = rule.matcher
    if isinstance(matcher, PathMatches) and isinstance(matcher.regex.pattern, str):
        if matcher.regex.flags & (re.IGNORECASE | re.VERBOSE):
            return ""  # `/NPM` matches `/npm`, `/a b` matches `/ab`: no literal start to compare with
        return literal_prefix(matcher.regex.pattern)
    return ""  # any other matcher (host, method...): a candidate for every path


def first_segment(path: str) -> str | None:
    """`/npm/x/y` -> `npm`; None for a path that does not start with `/` (e.g. an absolute URI)."""
    if not path.startswith("/"):
        return None
    end = path.find("/", 1)
    return path[1:] if end < 0 else path[1:end]


def could_match(prefix: str, segment: str) -> bool:
    """Whether a path whose first segment is `segment` may start with `prefix`. Such a path is
    `/segment` followed by nothing or by `/...`."""
    head = "/" + segment
    if len(prefix) <= len(head):
        return head.startswith(prefix)
    return prefix.startswith(head + "/")


class PrefixIndex:
    """The rules of one router, grouped by the first path segment they can match."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._size = len(rules)
        self._prefixes = [_rule_prefix(r) for r in rules]
        self._all = list(zip(rules, self._prefixes, strict=True))
        self._by_segment: dict[str, list[tuple[Rule, str]]] = {}

    def stale(self, rules: list[Rule]) -> bool:
        return rules is not self.rules or len(rules) != self._size

    def candidates(self, path: str) -> list[tuple[Rule, str]]:
        """The rules `path` may match, in order, each with the literal start a match needs."""
        segment = first_segment(path)
        if segment is None:
            return self._all
        found = self._by_segment.get(segment)
        if found is None:
            found = [(r, p) for r, p in self._all if could_match(p, segment)]
            if len(self._by_segment) < MAX_CACHED_SEGMENTS and len(segment) <= MAX_CACHED_SEGMENT_LEN:
                self._by_segment[segment] = found
        return found


class Application(tornado.web.Application):
    """Tornado's Application with routes found through a `PrefixIndex`."""

    def __init__(self, handlers: list[Any] | None = None, **settings: Any) -> None:
        super().__init__(handlers, **settings)
        self._index = PrefixIndex(self.wildcard_router.rules)

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> Any:
        if len(self.default_router.rules) != 1:  # host-specific handlers were added: Tornado's way
            return super().find_handler(request, **kwargs)
        router = self.wildcard_router
        if self._index.stale(router.rules):
            self._index = PrefixIndex(router.rules)
        path = request.path
        for rule, prefix in self._index.candidates(path):
            if not path.startswith(prefix):
                continue  # its regex cannot match: a match starts with the literal prefix
            params = rule.matcher.match(request)
            if params is None:
                continue
            if rule.target_kwargs:
                params["target_kwargs"] = rule.target_kwargs
            delegate: HTTPMessageDelegate | None = router.get_target_delegate(rule.target, request, **params)
            if delegate is not None:
                return delegate
        default = self.settings.get("default_handler_class")
        if default:
            return self.get_handler_delegate(request, default, self.settings.get("default_handler_args", {}))
        return self.get_handler_delegate(request, tornado.web.ErrorHandler, {"status_code": 404})


