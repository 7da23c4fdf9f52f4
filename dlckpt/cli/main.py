"""`dlckpt COMMAND …` and `python -m dlckpt COMMAND …`: every script, from any environment.

The commands are the scripts' own `main(argv)`, with the same flags, output and exit
codes; `estimate` is `small-buffer --estimate-only`. Installed with the package (the
`dlckpt` console command), so a training environment with its own TensorFlow, TFDS and
code runs the tests where the job runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from dlckpt.errors import EXIT_USAGE

# command -> (module in dlckpt.cli or dlckpt.preflight, arguments put first, what it does)
COMMANDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "small-buffer": (
        "dlckpt.cli.small_buffer",
        (),
        "size estimates + round trip with a small buffer",
    ),
    "estimate": (
        "dlckpt.cli.small_buffer",
        ("--estimate-only",),
        "measured checkpoint size, no round trip",
    ),
    "local-staging": ("dlckpt.cli.local_staging", (), "save into LOCAL_STAGING_DIR, then upload"),
    "original": ("dlckpt.cli.original", (), "the full-buffer test in TensorFlow's temp folder"),
    "strategies": ("dlckpt.cli.strategies", (), "compare shuffle strategies side by side"),
    "multi-host": (
        "dlckpt.cli.multi_host",
        (),
        "every process of a multi-host job saved at once, restored, compared",
    ),
    "launch-ranks": (
        "dlckpt.cli.launch_ranks",
        (),
        "multi-host --launcher on this machine: ranks started as torchrun starts them",
    ),
    "diagnose": ("dlckpt.cli.diagnose", (), "why a gs:// save failed on this host"),
    "disk-check": (
        "dlckpt.preflight.disk_check",
        (),
        "free space of every folder a checkpoint passes",
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: dlckpt COMMAND [--config-name NAME] [key=value ...]  (COMMAND --help for more)"
    ]
    lines += [f"  {name:<{width}}  {what}" for name, (_, _, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; exit codes are the command's own, 2 for an unknown command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0 if args else EXIT_USAGE
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(
            f"✗ dlckpt: unknown command {command!r} (expected one of: {', '.join(COMMANDS)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    module_name, first, _ = COMMANDS[command]
    module = importlib.import_module(module_name)
    return int(module.main([*first, *rest], prog=f"dlckpt {command}"))


def entry() -> None:
    """The console command: `main`, with the signal exit codes the scripts use."""
    from dlckpt.runtime.signals import exit_process

    exit_process(main())
