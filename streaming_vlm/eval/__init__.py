"""Evaluation: the benchmark runner and pairwise LLM judging."""
