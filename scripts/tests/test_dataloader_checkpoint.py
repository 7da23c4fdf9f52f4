#!/usr/bin/env python3
"""Original full-buffer test: round-trip the production config's checkpoint as training saves it.

The body is `dlckpt.cli.original` (also `dlckpt original …` once installed); this
file keeps the script's path, flags and exit codes: see `--help`.
"""

from _common import exit_process

from dlckpt.cli.original import main

__all__ = ["main"]

if __name__ == "__main__":
    exit_process(main())
