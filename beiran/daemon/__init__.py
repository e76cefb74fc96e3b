"""The daemon: Tornado application, listeners, lifecycle."""
