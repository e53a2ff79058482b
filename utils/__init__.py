"""Small pieces every stage shares: user-facing errors, atomic file writes, cache paths, typed configs."""
