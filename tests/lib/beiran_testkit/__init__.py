"""Real daemons, a counting origin server and helpers for Beiran's tests."""
