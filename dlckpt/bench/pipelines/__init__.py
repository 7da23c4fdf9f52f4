"""Pipelines the benchmarks (and tests) measure the estimator and the verdicts on, unlike the
presets.
"""
