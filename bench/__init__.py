"""Benchmarks of the platform on one machine: `make bench` (python -m bench.run)."""
