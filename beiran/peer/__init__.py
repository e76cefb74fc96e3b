"""Peer protocol: one WebSocket per node pair for availability sync, heartbeats and RPC; plain HTTP
(`GET /blobs/<digest>`) for the bytes."""
