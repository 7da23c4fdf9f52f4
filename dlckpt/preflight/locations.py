"""Where a checkpoint's bytes go, whether they fit, and the largest buffer that does.

Every folder a scenario writes into (scratch, TensorFlow's temp folder for gs:// writes,
the download folder, LOCAL_STAGING_DIR), host RAM for the buffer and the GCS total are
rows of one table. Rows on the same disk share its free space, so each disk is checked
against the sum of its rows. Checking never writes: free space comes from statvfs.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from dlckpt.errors import PreflightRefusal, UsageError
from dlckpt.job_env import THIS_SHELL
from dlckpt.paths import command
from dlckpt.tempdir import existing_ancestor, roomy_folder, tf_temp_dir
from dlckpt.units import format_size

if TYPE_CHECKING:  # at run time nothing here needs NumPy: check_disk_space.sh imports it
    from dlckpt.estimate.estimator import EstimateResult

RAM = "RAM"
# The buffer in memory while its iterator is saved (EstimateResult.ram_bytes_for).
RAM_ROW = "host RAM (the buffer while it is saved)"
SCENARIOS = ("small_buffer", "local_staging", "full")


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
    if scenario == "local_staging":
        staging = staging_dir or os.environ.get("LOCAL_STAGING_DIR") or scratch
        saved = Location(
            "staging folder (the saved checkpoint)", staging, checkpoint,
            variable="LOCAL_STAGING_DIR",
        )  # fmt: skip
    else:
        saved = Location(
            "scratch folder (the saved checkpoint)", scratch, checkpoint, variable="TMPDIR"
        )
    hosts = estimate.num_hosts
    return [
        saved,
        Location(
            f"TensorFlow temp folder for gs:// writes ({tf_variable})", tf_temp, checkpoint,
            variable="TMPDIR" if tf_variable in ("TMPDIR", "default") else tf_variable,
        ),
        Location(
            "download folder (restore from GCS)", download_dir or scratch, checkpoint,
            variable="TMPDIR",
        ),
        Location(RAM_ROW, RAM, estimate.ram_bytes_for(estimate.tested_buffer)),
        Location(
            f"GCS total ({hosts} host{'s' if hosts != 1 else ''})",
            gcs_uri or os.environ.get("GCS_TEST_BUCKET") or "gs:// (embedded server when unset)",
            checkpoint * hosts,
        ),
    ]  # fmt: skip


def tensorflow_gcs_locations(
    estimate: EstimateResult, *, embedded_dir: str | None, gcs_uri: str | None = None
) -> list[Location]:
    """The rows when TensorFlow saves straight to gs:// and the restore reads from there.

    TensorFlow stages each checkpoint file whole in its temp folder; nothing else is
    written locally. With the embedded server (`embedded_dir`: where its objects go on
    disk) its storage and its memory are rows too: fake-gcs-server holds an upload whole
    while it reads it (storage.embedded.server.SERVER_RAM_BYTES_PER_BYTE, measured by
    scripts/bench_tf_gcs.py).
    """
    from dlckpt.storage.embedded.server import (
        SERVER_COPIES,
        SERVER_RAM_BASE_BYTES,
        SERVER_RAM_BYTES_PER_BYTE,
    )

    checkpoint = estimate.tested_bytes
    tf_temp, tf_variable, _ = tf_temp_dir()
    variable = "TMPDIR" if tf_variable in ("TMPDIR", "default") else tf_variable
    rows = [
        Location(
            f"TensorFlow temp folder for gs:// writes ({tf_variable})",
            tf_temp,
            checkpoint,
            variable=variable,
        ),
        Location(
            RAM_ROW,
            RAM,
            estimate.ram_bytes_for(estimate.tested_buffer),
        ),
    ]
    if embedded_dir is None:
        hosts = estimate.num_hosts
        rows.append(
            Location(
                f"GCS total ({hosts} host{'s' if hosts != 1 else ''})",
                gcs_uri or "gs://",
                checkpoint * hosts,
            )
        )
        return rows
    rows.append(
        Location(
            "embedded GCS server storage",
            embedded_dir,
            SERVER_COPIES * checkpoint,
            variable="TMPDIR",
        )
    )
    rows.append(
        Location(
            "embedded GCS server RAM (holds an upload whole)",
            RAM,
            SERVER_RAM_BASE_BYTES + int(SERVER_RAM_BYTES_PER_BYTE * checkpoint),
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
            RAM_ROW,
            RAM,
            estimate.ram_bytes_for(estimate.original_buffer) * processes,
        ),
        Location(
            bucket_role(estimate.num_hosts, processes, estimate.checkpoints_in_bucket),
            os.environ.get("GCS_TEST_BUCKET") or "gs://",
            checkpoint * checkpoints_in_the_bucket(estimate, processes),
        ),
    ]


def checkpoints_in_the_bucket(estimate: Any, processes: int) -> int:
    """Checkpoints the job's bucket holds at its peak: hosts x processes per host x the ones
    each keeps (estimate.max_to_keep, plus the one being written)."""
    return estimate.num_hosts * processes * estimate.checkpoints_in_bucket


def bucket_factors(hosts: int, processes: int, kept: int) -> str:
    """`2 hosts`, then the processes per host and the checkpoints kept (with the one being
    written) when they multiply it, joined by a multiplication sign."""
    parts = [f"{hosts} host{'s' if hosts != 1 else ''}"]
    if processes > 1:
        parts.append(f"{processes} processes")
    if kept > 1:
        parts.append(f"{kept} checkpoints: max_to_keep {kept - 1} + the one being written")
    return " × ".join(parts)


def bucket_role(hosts: int, processes: int, kept: int) -> str:
    """The bucket's row: `GCS total (...)` with bucket_factors inside."""
    return f"GCS total ({bucket_factors(hosts, processes, kept)})"


# The resident memory of one TensorFlow process that builds a small pipeline, iterates it
# and saves its iterator: 566 MB (616 MB with Keras imported), measured as the maximum
# resident set (`/usr/bin/time -f %M`) on TensorFlow 2.21. A multi-host run holds two per
# process at once: the process and the new process it restores in.
TENSORFLOW_PROCESS_RAM_BYTES = 620 * 2**20


def multi_host_locations(
    estimate: EstimateResult,
    processes: int,
    *,
    embedded_dir: str | None,
    gcs_uri: str | None,
    in_bucket: int | None = None,
) -> list[Location]:
    """The rows a multi-host run on this machine fills: every stand-in host's temp folder is
    under this machine's, so all `processes` stage their checkpoint in it at once, hold their
    buffers in its RAM with two TensorFlow processes each (TENSORFLOW_PROCESS_RAM_BYTES), and
    upload to one server (its storage keeps SERVER_COPIES of each; it holds each upload
    whole while it reads it, all at once at the barrier). Under a launcher `processes` is
    this host's and `in_bucket` the job's count (default `processes`), for the GCS total."""
    from dlckpt.storage.embedded.server import SERVER_RAM_BASE_BYTES, SERVER_RAM_BYTES_PER_BYTE

    rows = []
    for row in tensorflow_gcs_locations(estimate, embedded_dir=embedded_dir, gcs_uri=gcs_uri):
        if row.role.startswith("embedded GCS server RAM"):
            needed = SERVER_RAM_BASE_BYTES + int(
                SERVER_RAM_BYTES_PER_BYTE * estimate.tested_bytes * processes
            )
        elif row.role.startswith("GCS total"):
            needed = estimate.tested_bytes * (in_bucket or processes)
        elif row.path == RAM:  # the buffers, and the processes themselves
            needed = (row.required_bytes + 2 * TENSORFLOW_PROCESS_RAM_BYTES) * processes
        else:
            needed = row.required_bytes * processes
        counted = f"{processes} process{'es' if processes != 1 else ''}"
        role = f"{row.role.split(' (')[0]} ({counted})"
        if row.role.startswith("GCS total"):
            role = f"GCS total ({in_bucket or processes} processes)"
        if row.path == RAM and row.role == RAM_ROW:
            role = f"host RAM ({counted}: buffers, 2 TensorFlow processes each)"
        if row.role.startswith("TensorFlow temp folder"):
            role = f"{row.role[:-1]}, {counted})"
        rows.append(replace(row, role=role, required_bytes=needed))
    return rows


def configured_fit_line(
    rows: Sequence[Location],
    estimate: EstimateResult,
    environment: str = THIS_SHELL,
    largest: int | None = None,
    *,
    run_rows: Sequence[Location] = (),
) -> str:
    """One line: does the configured buffer's checkpoint fit every location (`rows`, and
    for a run of the configured buffer its own `run_rows`), and where, for which
    `environment` (job_env's source: this shell's, or the job's from --env-file)."""
    checked = (
        f"checked in {environment}'s environment (the job's own: --env-file job.env, or "
        "TMPDIR=… as an argument)"
        if environment == THIS_SHELL
        else f"checked in the job's environment ({environment})"
    )
    buffer = f"shuffle_buffer_size {estimate.original_buffer:,}"
    if estimate.unsaveable:
        return (
            f"⚠ NO CHECKPOINT CAN BE WRITTEN: TensorFlow refuses to save this pipeline's "
            f"iterator, so no {buffer} fits or overflows anything; the sizes above are the "
            "README's formula, not a measurement (the ✗ line of a test run names the "
            "transformation and the fix)"
        )
    failing = [row for row in [*rows, *run_rows] if not row.ok]
    if not failing:
        room = " and ".join(
            f"RAM ({format_size(row.free_bytes)} available)"
            if row.path == RAM
            else f"{row.path} ({format_size(row.free_bytes)} free)"
            for row in rows
            if row.free_bytes is not None
        )
        staged = [row for row in rows if row.role.startswith("TensorFlow temp folder")]
        per_host = staged[0].required_bytes if staged else estimate.original_bytes
        # Several processes per host: the folder holds all of theirs, so say both figures.
        each = f"{format_size(estimate.original_bytes)} checkpoint" + (
            f" per process ({format_size(per_host)} per host)"
            if per_host > estimate.original_bytes
            else ""
        )
        return (
            f"✓ THE CONFIGURED BUFFER FITS: {buffer} writes a {each}, which fits {room}; "
            f"{checked}. "
            "If a save still fails with `Could not append to the internal temporary file`, the "
            f"cause is elsewhere: {command('diagnose')}"
        )
    row = failing[0]
    # A disk is shared by the rows of one kind: the job's, or the run's (whose temp folder
    # row is the job's own staging again).
    of_the_run = any(row is r for r in run_rows)
    _, need = _disk_need(row, run_rows if of_the_run else rows)  # RAM: the row's own need
    # Training's own save may fit while this test's run of the same buffer (its scratch
    # and download folders too) does not: say which, not a bare "does not fit".
    headline = (
        "⚠ TRAINING'S SAVE OF THE CONFIGURED BUFFER FITS, THIS TEST'S RUN OF IT DOES NOT"
        if of_the_run and all(r.ok for r in rows)
        else "⚠ THE CONFIGURED BUFFER DOES NOT FIT"
    )
    where = "this run's " if of_the_run else ""
    return (
        f"{headline}: {buffer}: {where}{row.role} {row.path} {need}, "
        f"{format_size(row.free_bytes or 0)} free; "
        f"{checked}. "
        + (
            f"The largest that fits: dataloader.shuffle_buffer_size={largest:,} (with "
            f"{ADVICE_MARGIN:.0%} to spare at the upper end of the estimate's ±); "
            if largest
            else ""
        )
        + f"{command('diagnose')} checks the other causes"
    )


def _disk_need(row: Location, rows: Sequence[Location]) -> tuple[int, str]:
    """What `row`'s disk must hold, with the other `rows` on it: (bytes, "needs X (N rows
    on this disk)")."""
    same_disk = next((g for g in _disk_groups(rows) if row in g), [row])
    total = sum(r.required_bytes for r in same_disk)
    shared = f" ({len(same_disk)} rows on this disk)" if len(same_disk) > 1 else ""
    return total, f"needs {format_size(total)}{shared}"


def check_locations(rows: Sequence[Location], margin: float = 0.0) -> list[Location]:
    """Fill in free space and OK: folders on one disk are checked against their sum, every
    RAM row against the same available memory; `margin` of each stays unused (the advice's
    ADVICE_MARGIN; 0 for the preflight itself)."""
    import psutil

    by_device: dict[int, list[Location]] = {}
    for row in rows:
        if row.path == RAM:  # every RAM row counts against the same memory
            row.free_bytes = int(psutil.virtual_memory().available)
            needed = sum(r.required_bytes for r in rows if r.path == RAM)
            row.ok = needed <= row.free_bytes * (1 - margin)
        elif row.path.startswith("gs://"):
            row.free_bytes, row.ok = None, True
        else:
            existing = existing_ancestor(row.path)
            row.free_bytes = int(psutil.disk_usage(str(existing)).free)
            by_device.setdefault(existing.stat().st_dev, []).append(row)
    for group in by_device.values():
        total = sum(r.required_bytes for r in group)
        for row in group:
            row.ok = total <= (row.free_bytes or 0) * (1 - margin)
            if len(group) > 1:
                others = len(group) - 1
                row.note = (
                    f"shares its disk with {others} other row(s): {format_size(total)} in all"
                )
    return list(rows)


def locations_table(rows: Sequence[Location]) -> str:
    from tabulate import tabulate

    table = [
        [
            row.role,
            row.path,
            "n/a" if row.free_bytes is None else format_size(row.free_bytes),
            format_size(row.required_bytes),
            "OK" if row.ok else "NOT OK",
        ]
        for row in rows
    ]
    return tabulate(table, headers=["role", "path", "free", "required", "fits"], tablefmt="simple")


# The share of each location's free space the advice leaves unused: other writes, the
# estimate's own error beyond its stated ±, filesystem overhead.
ADVICE_MARGIN = 0.10


def _disk_groups(rows: Sequence[Location]) -> list[list[Location]]:
    """Rows that share a disk, grouped (rows without a folder are left out)."""
    groups: dict[int, list[Location]] = {}
    for row in rows:
        if row.path == RAM or row.path.startswith("gs://") or row.free_bytes is None:
            continue
        groups.setdefault(existing_ancestor(row.path).stat().st_dev, []).append(row)
    return list(groups.values())


def tightest_room(rows: Sequence[Location], margin: float = ADVICE_MARGIN) -> int:
    """The smallest room a disk of `rows` leaves one of its rows (free space less `margin`,
    shared by the rows on it), in bytes: what "the tightest location" offers. 0: no folder."""
    checked = check_locations(rows)
    rooms = [
        int((group[0].free_bytes or 0) * (1 - margin)) // len(group)
        for group in _disk_groups(checked)
    ]
    return min(rooms) if rooms else 0


class AtBuffer:
    """An estimate's sizes for another shuffle buffer, at the upper end of its stated ±.

    What every row builder reads (`tested_*`, `original_*`, `ram_bytes_for`, `num_hosts`,
    `checkpoints_in_bucket`),
    so the rows a run or a job would fill can be rebuilt for any buffer and the advice
    holds even when the estimate is low by its whole ±. Bytes are ceilings.
    """

    def __init__(self, estimate: EstimateResult, buffer: int) -> None:
        self._estimate = estimate
        self._factor = 1 + (estimate.uncertainty_for(buffer) or 0.0)
        self.original_buffer = self.tested_buffer = buffer
        self.original_bytes = self.tested_bytes = math.ceil(
            estimate.bytes_for(buffer) * self._factor
        )
        self.num_hosts = estimate.num_hosts
        self.checkpoints_in_bucket = estimate.checkpoints_in_bucket
        self.unsaveable = estimate.unsaveable

    def ram_bytes_for(self, buffer: int) -> int:
        return math.ceil(self._estimate.ram_bytes_for(buffer) * self._factor)


# Rows for a buffer: the rows a run or a job fills, built from an estimate (or an AtBuffer).
RowsAt = Callable[[Any], list[Location]]
# No buffer size changes a constant checkpoint: the search stops here.
NO_LIMIT = 10**12


def largest_fitting_buffer(
    rows_at: RowsAt | Sequence[RowsAt],
    estimate: EstimateResult,
    *,
    margin: float = ADVICE_MARGIN,
    budget: int | None = None,
    copies: int = 1,
) -> int:
    """The one fit arithmetic: the largest shuffle buffer whose rows all fit (0: none).

    Every row `rows_at` builds for a buffer (several builders: each table on its own; disks
    with their rows' share, every RAM row against one memory: the embedded server's too) is
    sized at the upper end of the
    estimate's ± (AtBuffer) and must fit its free space less `margin`; with a `budget`
    (bytes), `copies` checkpoints (processes per host) must also fit in it. The preflight
    checks the same rows at the estimate itself with no margin, so a buffer from here
    passes it. NO_LIMIT when every buffer fits (a constant checkpoint).
    """

    builders = [rows_at] if callable(rows_at) else list(rows_at)

    def fits(buffer: int) -> bool:
        sized = AtBuffer(estimate, buffer)
        if budget is not None and sized.original_bytes * copies > budget:
            return False
        return all(
            row.ok for build in builders for row in check_locations(build(sized), margin=margin)
        )

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):
        low, high = high, high * 2
        if high > NO_LIMIT:
            return NO_LIMIT
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def refusal_message(
    row: Location,
    rows: Sequence[Location],
    estimate: EstimateResult,
    rows_at: RowsAt | Sequence[RowsAt],
    env: Mapping[str, str] | None = None,
) -> str:
    """Names the location, required vs free, and each fix that applies with its numbers.

    The suggested buffer fits every row `rows_at` builds at once (largest_fitting_buffer):
    rerun with it, the same preflight passes.
    """
    free = row.free_bytes or 0
    fixes = []
    largest = largest_fitting_buffer(rows_at, estimate)
    percent = f"{ADVICE_MARGIN:.0%}"
    if largest >= 1:
        fixes.append(
            f"set dataloader.shuffle_buffer_size={largest:,} or less (fits every location "
            f"with {percent} to spare at the upper end of the estimate's ±; checkpoint "
            f"~{format_size(estimate.bytes_for(largest))}, "
            f"RAM ~{format_size(estimate.ram_bytes_for(largest))})"
        )
    elif any(r.role.startswith("embedded GCS server RAM") and not r.ok for r in rows):
        # Only when its RAM is what does not fit: a full disk is named by `what` below.
        fixes.append(
            "no buffer size fits with the embedded GCS server, which holds an upload whole in "
            "RAM: set GCS_TEST_BUCKET to a bucket of yours or to a local folder"
        )
    else:
        fixes.append("no buffer size fits every location")
    if row.role.startswith("embedded GCS server") and largest >= 1:
        fixes.insert(
            1,
            (
                "or keep the buffer and use a destination that does not hold the upload in this "
                "host's RAM: GCS_TEST_BUCKET=gs://your-bucket/prefix or a local folder"
            ),
        )
    if row.path == RAM:
        what = f"{row.role}: needs {format_size(row.required_bytes)}, {format_size(free)} available"
    else:
        total, need = _disk_need(row, rows)
        roomy = roomy_folder(total, row.path, env)
        if roomy is not None and row.variable:
            fixes.append(f"export {row.variable}={roomy[0]} ({format_size(roomy[1])} free)")
        what = f"{row.role} {row.path}: {need}, {format_size(free)} free"
    fixes.append(
        f"run the small-buffer test: {command('small-buffer')} "
        f"(checkpoint ~{format_size(estimate.bytes_for(100))} at buffer 100)"
    )
    fixes.append("or pass --force to run anyway")
    return f"{what}. Fixes: " + "; ".join(fixes)


def preflight(
    rows: Sequence[Location],
    estimate: EstimateResult,
    rows_at: RowsAt | Sequence[RowsAt],
    *,
    force: bool,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Raise PreflightRefusal for the first row that does not fit; with `force`, return
    warnings. `rows_at` rebuilds `rows` for another buffer (the advice)."""
    failing = [row for row in rows if not row.ok]
    if not failing:
        return []
    messages = [refusal_message(row, rows, estimate, rows_at, env) for row in failing]
    if not force:
        raise PreflightRefusal(messages[0])
    return messages
