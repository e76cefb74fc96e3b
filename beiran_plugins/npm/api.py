"""HTTP routes of the npm plugin (all under /npm/)."""

ROUTES: list = []
