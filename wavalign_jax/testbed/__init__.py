"""Synthetic spoken-QA testbed: unit-TTS, seeded tasks, rule judge, IQ/EQ metrics, dataset writer."""
