"""Database models of the docker plugin."""

MODELS: list = []
