"""Generated CRI runtime.v1 ImageService code (see api.proto and generate.sh)."""
