"""`python -m beiran` is `beiran`."""

from beiran.cli.main import main

main()
