"""HTTP routes of the zeroconf plugin (all under /zeroconf/)."""

ROUTES: list = []
