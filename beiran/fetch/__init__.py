"""The cluster fetcher: `fetch(digest, size, source)` — local store, then peers, then the origin."""
