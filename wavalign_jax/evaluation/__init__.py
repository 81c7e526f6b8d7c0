"""Evaluation: benchmark scorers (VoiceBench, OpenAudioBench, VStyle) over saved responses and their report writer;
response generation (generate.py); a run's in-training evaluation on built datasets (reward_eval.py) and its files
(run_summary.py)."""
