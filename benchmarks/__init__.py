"""Benchmarks: measured side by side in one run, printed as ratios and written as JSON. `python -m benchmarks`."""
