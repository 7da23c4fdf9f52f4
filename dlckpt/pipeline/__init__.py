"""The user's pipeline: building it from the config, its tensors, the risks to an exact resume, the
reference robot dataloader.
"""
