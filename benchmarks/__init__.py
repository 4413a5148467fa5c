"""Benchmarks (pytest-benchmark) and the scripts that produce benchmarks/RESULTS.md."""
