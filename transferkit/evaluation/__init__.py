"""Evaluation: metrics, plots and the short report every run writes."""
