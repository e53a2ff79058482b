"""Shipped recipes: `<base>/<job>.yaml` (complete and runnable) and `accelerate/*.yaml` launch configs."""
