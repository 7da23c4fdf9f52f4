"""The round trip: fill the shuffle buffer, save, transfer, restore in a new process, compare batch
digests.
"""
