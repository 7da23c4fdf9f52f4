#!/usr/bin/env python3
"""Try `multi-host --launcher` on this machine: N processes started as torchrun starts ranks.

The body is `dlckpt.cli.launch_ranks` (also `dlckpt launch-ranks …` once installed); this
file keeps a script's path, flags and exit codes: see `--help`.
"""

from dlckpt.cli.launch_ranks import main
from dlckpt.runtime.signals import exit_process

__all__ = ["main"]

if __name__ == "__main__":
    exit_process(main(prog="launch_ranks.py"))
