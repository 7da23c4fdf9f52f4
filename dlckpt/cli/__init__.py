"""The command line every script shares: the parser, exit codes, the run wrapper."""
