#!/usr/bin/env python3
"""Multi-host test: every process's iterator checkpoint saved at once, restored, compared.

The body is `dlckpt.cli.multi_host` (also `dlckpt multi-host …` once installed); this
file keeps a script's path, flags and exit codes: see `--help`.
"""

from dlckpt.cli.multi_host import main
from dlckpt.runtime.signals import exit_process

__all__ = ["main"]

if __name__ == "__main__":
    exit_process(main(prog="multi_host.py"))
