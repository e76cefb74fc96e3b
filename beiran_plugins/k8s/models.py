"""Database models of the k8s plugin."""

MODELS: list = []
