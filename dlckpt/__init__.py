"""Dataloader Checkpoint Testing: the engine behind scripts/tests/ (test, size, preflight,
diagnose, fix a tf.data iterator checkpoint).
"""
