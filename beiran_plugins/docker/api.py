"""HTTP routes of the docker plugin (all under /docker/)."""

ROUTES: list = []
