"""Command-line tools: dialogue JSONL -> ArrayRecord shards of laid-out examples, and their inspection."""
