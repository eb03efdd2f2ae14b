"""Benchmarks and demos, run as `python -m bench.NAME` from the project root."""
