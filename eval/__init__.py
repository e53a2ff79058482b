"""Evaluation: acceptance length, per-depth acceptance, throughput and speedup reports."""
