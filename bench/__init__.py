"""Benchmarks (not tests): run them with ``make bench-<name>`` or ``python -m bench.<name>``."""
