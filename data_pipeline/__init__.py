"""Command lines over the dataset builder of wavalign_jax/data/: build.py (JSONL -> ArrayRecord), inspect.py."""
