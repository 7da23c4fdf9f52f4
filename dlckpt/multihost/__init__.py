"""Multi-host: one process per (host, process) on this machine, each with its own shard."""
