"""Evaluators (win rate, factuality), built on `trainers`; they never import `harness`."""
