"""Command line: `draftheads <verb>`, a thin dispatch table over importable functions."""
