"""Evaluation stage: metrics (one registry of names and cut-offs), scoring, baselines and slices."""
