"""Database models of the apt plugin."""

MODELS: list = []
