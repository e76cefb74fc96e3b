"""HTTP routes of the k8s plugin (all under /k8s/)."""

ROUTES: list = []
