"""Benchmarks behind `make bench`: side-by-side ratios against the machine's raw limits."""
