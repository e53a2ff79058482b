"""Decoding: the one tree-verification engine (tree build, verify, accept, KV compaction)."""
