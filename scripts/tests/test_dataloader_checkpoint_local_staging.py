#!/usr/bin/env python3
"""Local-staging test: save the checkpoint on a local disk you choose, then send it through GCS.

The body is `dlckpt.cli.local_staging` (also `dlckpt local-staging …` once installed); this
file keeps the script's path, flags and exit codes: see `--help`.
"""

from _common import exit_process

from dlckpt.cli.local_staging import main

__all__ = ["main"]

if __name__ == "__main__":
    exit_process(main())
