"""Content-addressed blob store: verified writes, growing-blob readers, pins and eviction."""
