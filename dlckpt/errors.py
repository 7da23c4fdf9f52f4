"""The exceptions that map to the project's exit codes (see _common.run_main)."""


class UsageError(Exception):
    """Bad input: exit 2 with this one line, no traceback."""


class PreflightRefusal(Exception):
    """A save that cannot fit: exit 3, refused before the buffer is filled."""


class PipelineTooShort(UsageError):
    """The dataloader ends before the test can save and compare: exit 2, one line."""


class RunError(Exception):
    """Something unexpected stopped the run (not a failed check): exit 4, one line."""
