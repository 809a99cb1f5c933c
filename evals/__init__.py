"""Evaluators (win rate, factuality): built in the evaluator issue on top of `trainers`."""
