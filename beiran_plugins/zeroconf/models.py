"""Database models of the zeroconf plugin."""

MODELS: list = []
