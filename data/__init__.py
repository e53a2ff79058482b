"""Data: sources (ShareGPT, MT-bench, JSONL, datasets), chat templates and loss masks, datasets, collation."""
