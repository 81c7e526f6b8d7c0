"""Benchmark scorers (VoiceBench, OpenAudioBench, VStyle) over saved responses, and the report writer."""
