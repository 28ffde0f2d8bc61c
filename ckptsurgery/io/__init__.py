"""Bytes on disk: resolve a path to a checkpoint, read and validate it, write shards and the index, publish atomically."""
