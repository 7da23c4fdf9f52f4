"""What a run prints and writes: sizes for people, the JSON report for machines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _errors import UsageError


def format_bytes(count: float) -> str:
    """Decimal units, as disks and GCS bill them: 187.5 GB, 12.7 MB, 812 B."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def format_gb(count: float) -> str:
    """The headline unit: always GB, with enough digits to show a small figure."""
    gigabytes = count / 1e9
    return f"{gigabytes:.1f} GB" if gigabytes >= 1 else f"{gigabytes:.4f} GB"


def check_report_path(path: Path | None) -> None:
    if path is not None and path.expanduser().is_dir():
        raise UsageError(f"--report {path}: is a folder (expected a path to a .json file)")
    if path is not None and not path.expanduser().resolve().parent.is_dir():
        raise UsageError(
            f"--report {path}: its folder does not exist (expected a path to a new .json file)"
        )


def write_report(path: Path | None, report: dict[str, Any]) -> None:
    if path is None:
        return
    path.expanduser().write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
