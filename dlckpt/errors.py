"""The exit codes every script uses, and the exceptions that map to them (cli.common.run_main).

Interrupts exit 128 + the signal number (130 SIGINT, 143 SIGTERM, 129 SIGHUP): see
runtime.signals.
"""

EXIT_PASSED = 0  # every check passed
EXIT_FAILED = 1  # a check failed (the checkpoint does not restore exactly, a cause was found)
EXIT_USAGE = 2  # bad input: one line naming the input and the expected form
EXIT_PREFLIGHT = 3  # the preflight refused a save that cannot fit
EXIT_ERROR = 4  # something unexpected stopped the run before a verdict (not a failed check)
EXIT_INTERRUPTED = 130  # SIGINT


class UsageError(Exception):
    """Bad input: exit 2 with this one line, no traceback."""


class PreflightRefusal(Exception):
    """A save that cannot fit: exit 3, refused before the buffer is filled."""


class PipelineTooShort(UsageError):
    """The dataloader ends before the test can save and compare: exit 2, one line."""


class CheckFailed(Exception):
    """A check that failed before any round trip could run (TensorFlow cannot checkpoint
    what the pipeline is at all): exit 1, this one ✗ line saying why and what works."""


class RunError(Exception):
    """Something unexpected stopped the run (not a failed check): exit 4, one line."""
