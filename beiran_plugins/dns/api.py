"""HTTP routes of the dns plugin (all under /dns/)."""

ROUTES: list = []
