"""What a run prints and writes: sizes for people, the JSON report for machines."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dlckpt.errors import UsageError


def check_report_path(path: Path | None) -> None:
    """--report PATH must be a file this run can write: refuse now, not after the run.

    A folder, a missing folder, a device (/dev/full), a read-only disk or /proc is a
    one-line UsageError. The check creates and removes a temporary file beside PATH and
    opens PATH itself for appending when it already exists (nothing is truncated).
    """
    if path is None:
        return
    target = path.expanduser()
    if target.is_dir():
        raise UsageError(f"--report {path}: is a folder (expected a path to a .json file)")
    if not target.resolve().parent.is_dir():
        raise UsageError(
            f"--report {path}: its folder does not exist (expected a path to a new .json file)"
        )
    if target.exists() and not target.is_file():
        raise UsageError(
            f"--report {path}: is not a regular file (expected a path to a .json file)"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=target.resolve().parent, prefix=".dlckpt-report-"):
            pass
        if target.exists():
            with target.open("a"):
                pass
    except OSError as error:
        raise UsageError(
            f"--report {path}: cannot write there ({error.strerror or error}); "
            "expected a writable path to a .json file"
        ) from None


class _ReportState:
    """The run's --report path, and whether the run has written its report yet."""

    path: Path | None = None
    script: str = ""
    written: bool = False


def start_report(path: Path | None, script: str) -> None:
    """Check PATH (see check_report_path), then remove a previous run's report there.

    From here on the report is written on every exit (see write_exit_report), so a CI
    job never reads an earlier run's `passed: true`.
    """
    check_report_path(path)
    _ReportState.path, _ReportState.script, _ReportState.written = path, script, False
    if path is not None:
        path.expanduser().unlink(missing_ok=True)


def write_report(path: Path | None, report: dict[str, Any]) -> None:
    """Write the JSON report atomically (a temporary file beside it, then a rename).

    Raises UsageError (one line, exit 2) when it cannot be written, e.g. the disk filled.
    """
    if path is None:
        return
    target = path.expanduser()
    text = json.dumps(report, indent=2, sort_keys=False) + "\n"
    temporary = ""
    try:
        handle, temporary = tempfile.mkstemp(dir=target.resolve().parent, prefix=".dlckpt-report-")
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, target)
    except OSError as error:
        raise UsageError(
            f"--report {path}: could not be written ({error.strerror or error})"
        ) from None
    finally:
        if temporary:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    if path == _ReportState.path:
        _ReportState.written = True


def write_exit_report(
    exit_code: int, error: str, report: dict[str, Any] | None = None, *, fallback: Path | None
) -> str:
    """On an exit whose report the run did not write itself: `report` + exit_code + error.

    The path is the one start_report checked; before that (the parser failed) `fallback`,
    when it passes check_report_path. Returns '' or the one line to print when the
    report could not be written.
    """
    path = _ReportState.path
    if path is None and fallback is not None:
        try:
            check_report_path(fallback)
        except UsageError:
            return ""  # the report path itself is the bad input; the one line says so
        path = fallback
    if path is None or _ReportState.written:
        return ""
    data = {"script": _ReportState.script, **(report or {})}
    data.update({"passed": exit_code == 0, "exit_code": exit_code})
    if error:
        data["error"] = error
    try:
        write_report(path, data)
    except UsageError as failure:
        return str(failure)
    return ""


def reset_report() -> None:
    """Forget the previous run's --report (a new run in the same process)."""
    _ReportState.path, _ReportState.script, _ReportState.written = None, "", False
