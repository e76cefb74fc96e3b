"""HTTP routes of the apt plugin (all under /apt/)."""

ROUTES: list = []
