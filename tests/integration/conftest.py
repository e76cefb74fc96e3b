"""Fixtures of the test kit that tests/integration uses (pytest finds fixtures by name here)."""

from beiran_testkit.aptdetect import auto_apt_proxy  # noqa: F401 - the fixture
from beiran_testkit.netns import netns_lan  # noqa: F401 - the fixture
