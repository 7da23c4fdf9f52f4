#!/usr/bin/env python3
"""Diagnose `Could not append to the internal temporary file` on this host, for your config.

The body is `dlckpt.cli.diagnose` (also `dlckpt diagnose …` once installed); this
file keeps the script's path, flags and exit codes: see `--help`.
"""

from dlckpt.cli.diagnose import main
from dlckpt.runtime.signals import exit_process

__all__ = ["main"]

if __name__ == "__main__":
    exit_process(main())
