"""Evaluation: benchmarks → prompts → generation → judges → metrics → report."""
