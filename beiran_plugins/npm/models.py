"""Database models of the npm plugin."""

MODELS: list = []
