#!/usr/bin/env python3
"""Small-buffer test: prove the dataloader checkpoint restores exactly, cheaply.

The body is `dlckpt.cli.small_buffer` (also `dlckpt small-buffer …` once installed); this
file keeps the script's path, flags and exit codes: see `--help`.
"""

from _common import exit_process

from dlckpt.cli.small_buffer import main

__all__ = ["main"]

if __name__ == "__main__":
    exit_process(main())
