#!/usr/bin/env python3
"""Compare shuffle strategies side by side: checkpoint size, speed, shuffle quality, exact resume.

The body is `dlckpt.cli.strategies` (also `dlckpt strategies …` once installed); this
file keeps the script's path, flags and exit codes: see `--help`.
"""

from dlckpt.cli.strategies import main
from dlckpt.runtime.signals import exit_process

__all__ = ["main"]

if __name__ == "__main__":
    exit_process(main())
