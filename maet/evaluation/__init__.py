"""Evaluation and statistics: lm-eval tasks (stage 4), lm-eval's output files, and intervals,
paired differences and Holm over replications x items."""
