"""The apt plugin's lines in `GET /metrics`: archives by trust state, and Release files that did not
verify by reason (a missing key is an admin's task; a bad signature may be an attack)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from beiran_plugins.apt.trust import BAD_SIGNATURE, KEY_MISSING

if TYPE_CHECKING:
    from beiran_plugins.apt.plugin import AptPlugin


class AptCollector:
    """A prometheus_client collector reading the plugin's live state (no copies to keep in step)."""

    def __init__(self, plugin: AptPlugin) -> None:
        self.plugin = plugin

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        archive = getattr(self.plugin, "archive", None)
        sources = GaugeMetricFamily("beiran_apt_sources", "Upstream apt archives seen, by trust state",
                                    labels=["trust"])
        rejected = CounterMetricFamily("beiran_apt_releases_rejected",
                                       "Release files whose signature did not verify, by reason", labels=["reason"])
        if archive is not None:
            for state, n in sorted(Counter(archive.trust_states.values()).items()):
                sources.add_metric([state], n)
            for reason in (KEY_MISSING, BAD_SIGNATURE):
                rejected.add_metric([reason], archive.stats[f"releases_{reason}"])
        yield sources
        yield rejected
