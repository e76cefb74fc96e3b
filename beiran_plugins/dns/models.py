"""Database models of the dns plugin."""

MODELS: list = []
