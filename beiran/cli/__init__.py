"""The `beiran` command line. Kept light: `beiran --help` must not import plugin dependencies."""
