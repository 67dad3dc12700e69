"""Benchmark scripts of treeclip; `python -m benchmarks` runs the suite (benchmarks/run.py)."""
