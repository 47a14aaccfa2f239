"""Benchmarks of MAET's stages against what a user would pick instead; `python -m benchmarks.<name>`."""
