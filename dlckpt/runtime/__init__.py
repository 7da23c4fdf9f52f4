"""Process plumbing: the one TensorFlow import, signals as interrupts, children that die with the
parent, cleanup of what a run wrote.
"""
