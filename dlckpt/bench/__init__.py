"""make bench: save and transfer against raw limits, scaling, estimator accuracy, catch rate."""
