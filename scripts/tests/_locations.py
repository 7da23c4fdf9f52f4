"""Where a checkpoint's bytes go, whether they fit, and the largest buffer that does.

Every folder a scenario writes into (scratch, TensorFlow's temp folder for gs:// writes,
the download folder, LOCAL_STAGING_DIR), host RAM for the buffer and the GCS total are
rows of one table. Rows on the same disk share its free space, so each disk is checked
against the sum of its rows. Checking never writes: free space comes from statvfs.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _errors import PreflightRefusal, UsageError
from _estimate import EstimateResult
from _report import format_bytes

RAM = "RAM"
SCENARIOS = ("small_buffer", "local_staging", "full")

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6,
    "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_size(text: str, name: str = "--fit-budget") -> int:
    """`15GB`, `15 GB`, `1.5TB`, `500MiB` or a byte count -> bytes (GB = 10^9, as disks bill)."""
    match = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise UsageError(
            f"{name} {text!r}: expected a size such as 15GB, 500MB, 1.5TB or a byte count"
        )
    value = float(match.group(1).replace("_", "").replace(",", "")) * _UNITS[unit]
    if value < 1:
        raise UsageError(f"{name} {text!r}: expected a size above zero, e.g. 15GB")
    return int(value)


def tf_temp_dir(environ: dict[str, str] | None = None) -> tuple[str, str, str | None]:
    """(folder, variable that chose it, warning) as TensorFlow resolves its local temp folder.

    TensorFlow's GCS writer stages every file there before upload; it takes the first of
    TEST_TMPDIR, TMPDIR, TMP that names an existing folder, else /tmp.
    """
    env = os.environ if environ is None else environ
    for variable in ("TEST_TMPDIR", "TMPDIR", "TMP"):
        value = env.get(variable)
        if value and os.path.isdir(value):
            warning = None
            tmpdir = env.get("TMPDIR")
            if (
                variable == "TEST_TMPDIR"
                and tmpdir
                and os.path.realpath(tmpdir) != os.path.realpath(value)
            ):
                warning = (
                    f"TEST_TMPDIR={value} silently overrides TMPDIR={tmpdir} for TensorFlow's "
                    "temporary files; unset TEST_TMPDIR or point both at the same folder"
                )
            return value, variable, warning
    return "/tmp", "default", None


@dataclass
class Location:
    role: str
    path: str  # a folder, "RAM", or a gs:// URI
    required_bytes: int
    free_bytes: int | None = None  # None: no limit we can see (GCS)
    ok: bool = True
    variable: str = ""  # the environment variable that moves this folder
    note: str = ""

    def report(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "path": self.path,
            "free_bytes": self.free_bytes,
            "required_bytes": self.required_bytes,
            "ok": self.ok,
        }


def _existing(path: str) -> Path:
    candidate = Path(path).expanduser().absolute()
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


def scenario_locations(
    scenario: str,
    estimate: EstimateResult,
    *,
    scratch_dir: str | None = None,
    staging_dir: str | None = None,
    download_dir: str | None = None,
    gcs_uri: str | None = None,
) -> list[Location]:
    """The rows a scenario needs, sized for the buffer it will actually fill (`tested_buffer`)."""
    if scenario not in SCENARIOS:
        raise UsageError(f"scenario {scenario!r}: expected one of {', '.join(SCENARIOS)}")
    checkpoint = estimate.tested_bytes
    tf_temp, tf_variable, _ = tf_temp_dir()
    scratch = scratch_dir or (tf_temp if scenario == "full" else tempfile.gettempdir())
    rows: list[Location] = []
    if scenario == "local_staging":
        staging = staging_dir or os.environ.get("LOCAL_STAGING_DIR") or scratch
        rows.append(
            Location(
                "staging folder (the saved checkpoint)",
                staging,
                checkpoint,
                variable="LOCAL_STAGING_DIR",
            )
        )
    else:
        rows.append(
            Location(
                "scratch folder (the saved checkpoint)", scratch, checkpoint, variable="TMPDIR"
            )
        )
    rows.append(
        Location(
            f"TensorFlow temp folder for gs:// writes ({tf_variable})",
            tf_temp,
            checkpoint,
            variable="TMPDIR" if tf_variable in ("TMPDIR", "default") else tf_variable,
        )
    )
    rows.append(
        Location(
            "download folder (restore from GCS)",
            download_dir or scratch,
            checkpoint,
            variable="TMPDIR",
        )
    )
    rows.append(
        Location(
            "host RAM (the buffer, uncompressed)",
            RAM,
            estimate.ram_bytes_for(estimate.tested_buffer),
        )
    )
    rows.append(
        Location(
            f"GCS total ({estimate.num_hosts} host{'s' if estimate.num_hosts != 1 else ''})",
            gcs_uri or os.environ.get("GCS_TEST_BUCKET") or "gs:// (embedded server when unset)",
            checkpoint * estimate.num_hosts,
        )
    )
    return rows


def configured_locations(estimate: EstimateResult, processes: int = 1) -> list[Location]:
    """Where training's own save of the configured buffer goes: TensorFlow's temp folder for
    gs:// writes (one whole checkpoint per process on the host), RAM, the bucket."""
    checkpoint = estimate.original_bytes
    tf_temp, tf_variable, _ = tf_temp_dir()
    each = f", {processes} processes" if processes > 1 else ""
    return [
        Location(
            f"TensorFlow temp folder for gs:// writes ({tf_variable}{each})",
            tf_temp,
            checkpoint * processes,
            variable="TMPDIR" if tf_variable in ("TMPDIR", "default") else tf_variable,
        ),
        Location(
            "host RAM (the buffer, uncompressed)",
            RAM,
            estimate.ram_bytes_for(estimate.original_buffer) * processes,
        ),
        Location(
            f"GCS total ({estimate.num_hosts} host{'s' if estimate.num_hosts != 1 else ''})",
            os.environ.get("GCS_TEST_BUCKET") or "gs://",
            checkpoint * estimate.num_hosts * processes,
        ),
    ]


def configured_fit_line(rows: Sequence[Location], estimate: EstimateResult) -> str:
    """One line: does the configured buffer's checkpoint fit every location, and where."""
    buffer = f"shuffle_buffer_size {estimate.original_buffer:,}"
    failing = [row for row in rows if not row.ok]
    if not failing:
        room = " and ".join(
            f"RAM ({format_bytes(row.free_bytes)} available)"
            if row.path == RAM
            else f"{row.path} ({format_bytes(row.free_bytes)} free)"
            for row in rows
            if row.free_bytes is not None
        )
        return (
            f"✓ THE CONFIGURED BUFFER FITS: {buffer} writes a "
            f"{format_bytes(estimate.original_bytes)} checkpoint, which fits {room}. If a save "
            "still fails with `Could not append to the internal temporary file`, the cause is "
            "elsewhere: make diagnose"
        )
    row = failing[0]
    return (
        f"⚠ THE CONFIGURED BUFFER DOES NOT FIT: {buffer}: {row.role} {row.path} needs "
        f"{format_bytes(row.required_bytes)}, {format_bytes(row.free_bytes or 0)} free "
        "(--fit-budget gives the largest buffer that fits; make diagnose checks the other causes)"
    )


def check_locations(rows: Sequence[Location]) -> list[Location]:
    """Fill in free space and OK: folders on one disk are checked against their sum."""
    import psutil

    by_device: dict[int, list[Location]] = {}
    for row in rows:
        if row.path == RAM:
            row.free_bytes = int(psutil.virtual_memory().available)
            row.ok = row.required_bytes <= row.free_bytes
        elif row.path.startswith("gs://"):
            row.free_bytes, row.ok = None, True
        else:
            existing = _existing(row.path)
            row.free_bytes = int(psutil.disk_usage(str(existing)).free)
            by_device.setdefault(existing.stat().st_dev, []).append(row)
    for group in by_device.values():
        total = sum(r.required_bytes for r in group)
        for row in group:
            row.ok = total <= (row.free_bytes or 0)
            if len(group) > 1:
                others = len(group) - 1
                row.note = (
                    f"shares its disk with {others} other row(s): {format_bytes(total)} in all"
                )
    return list(rows)


def locations_table(rows: Sequence[Location]) -> str:
    from tabulate import tabulate

    table = [
        [
            row.role,
            row.path,
            "n/a" if row.free_bytes is None else format_bytes(row.free_bytes),
            format_bytes(row.required_bytes),
            "OK" if row.ok else "NOT OK",
        ]
        for row in rows
    ]
    return tabulate(table, headers=["role", "path", "free", "required", "fits"], tablefmt="simple")


def tightest_budget(rows: Sequence[Location]) -> int:
    """The checkpoint size the tightest disk can take, given its share with the other rows on it."""
    budgets = []
    for row in rows:
        if row.path == RAM or row.path.startswith("gs://") or row.free_bytes is None:
            continue
        same_disk = [r for r in rows if r.free_bytes == row.free_bytes and r.path not in (RAM,)]
        budgets.append(row.free_bytes // max(len(same_disk), 1))
    return min(budgets) if budgets else 0


def roomy_folder(needed: int, exclude: str) -> tuple[str, int] | None:
    """A writable folder on another disk with at least `needed` bytes free (the roomiest)."""
    import psutil

    excluded_device = _existing(exclude).stat().st_dev
    candidates = [
        os.environ.get("LOCAL_STAGING_DIR", ""),
        str(Path.home()),
        os.getcwd(),
        "/tmp",
        "/var/tmp",
        "/mnt",
    ]
    candidates += [p.mountpoint for p in psutil.disk_partitions(all=False)]
    best: tuple[str, int] | None = None
    seen: set[int] = set()
    for folder in candidates:
        if not folder or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            continue
        device = os.stat(folder).st_dev
        if device == excluded_device or device in seen:
            continue
        seen.add(device)
        free = int(psutil.disk_usage(folder).free)
        if free >= needed and (best is None or free > best[1]):
            best = (folder, free)
    return best


def refusal_message(row: Location, rows: Sequence[Location], estimate: EstimateResult) -> str:
    """Names the location, required vs free, and each fix that applies with its numbers."""
    free = row.free_bytes or 0
    fixes = []
    if row.path == RAM:
        per_element = estimate.ram_bytes_for(estimate.tested_buffer) / max(
            estimate.tested_buffer, 1
        )
        largest = int(free // per_element) if per_element else 0
        fixes.append(
            f"set dataloader.shuffle_buffer_size={largest:,} or less (its buffer fits in RAM)"
        )
        what = (
            f"{row.role}: needs {format_bytes(row.required_bytes)}, {format_bytes(free)} available"
        )
    else:
        same_disk = [
            r for r in rows if r.free_bytes == row.free_bytes and r.path != RAM and r.ok is False
        ]
        total = sum(r.required_bytes for r in same_disk) or row.required_bytes
        share = free * row.required_bytes // max(total, 1)
        largest = estimate.largest_buffer_within(share)
        if largest >= 1:
            fixes.append(
                f"set dataloader.shuffle_buffer_size={largest:,} or less "
                f"(checkpoint ~{format_bytes(estimate.bytes_for(largest))})"
            )
        else:
            fixes.append("no buffer size fits there")
        roomy = roomy_folder(total, row.path)
        if roomy is not None and row.variable:
            fixes.append(f"export {row.variable}={roomy[0]} ({format_bytes(roomy[1])} free)")
        what = (
            f"{row.role} {row.path}: needs {format_bytes(total)}"
            + (f" ({len(same_disk)} rows on this disk)" if len(same_disk) > 1 else "")
            + f", {format_bytes(free)} free"
        )
    fixes.append(
        "run the small-buffer test: make small-buffer "
        f"(checkpoint ~{format_bytes(estimate.bytes_for(100))} at buffer 100)"
    )
    fixes.append("or pass --force to run anyway")
    return f"{what}. Fixes: " + "; ".join(fixes)


def preflight(rows: Sequence[Location], estimate: EstimateResult, *, force: bool) -> list[str]:
    """Raise PreflightRefusal for the first row that does not fit; with `force`, return warnings."""
    failing = [row for row in rows if not row.ok]
    if not failing:
        return []
    messages = [refusal_message(row, rows, estimate) for row in failing]
    if not force:
        raise PreflightRefusal(messages[0])
    return messages
