"""--fit-budget: does the configured shuffle buffer fit a budget, and the largest that does."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dlckpt.preflight.locations import (
    NO_LIMIT,
    RAM,
    Location,
    RowsAt,
    largest_fitting_buffer,
    tightest_room,
)
from dlckpt.units import format_size

if TYPE_CHECKING:
    from dlckpt.estimate.estimator import EstimateResult


def fit_budget(
    result: EstimateResult,
    budget: int | None,
    processes: int,
    rows_at: RowsAt,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """--fit-budget: whether the configured buffer fits, then the largest buffer that does.

    `budget` (bytes; None: the job's own locations) is the room on one host, shared by its
    `processes` (estimate.processes_per_host): each saves its own checkpoint, so the budget
    holds `processes` of them, and host RAM (the RAM rows `rows_at` builds) still caps it.
    Without a budget the answer fits every row `rows_at` builds (the job's temp folder and
    RAM, per host). Either way each figure is taken at the upper end of the estimate's ±,
    with ADVICE_MARGIN to spare (preflight.locations.largest_fitting_buffer). Prints one
    FIT BUDGET line; returns the report's `fit_budget`.
    """
    original = result.original_buffer

    def ram_rows(sized: Any) -> list[Location]:
        return [row for row in rows_at(sized) if row.path == RAM]

    # Your budget stands for the folders; host RAM still caps it.
    limits: RowsAt = ram_rows if budget is not None else rows_at
    largest = largest_fitting_buffer(limits, result, budget=budget, copies=processes)
    configured_fits = largest >= original
    each = result.bytes_for(original)
    per_host = f" × {processes} processes per host" if processes > 1 else ""
    shown = budget if budget is not None else tightest_room(rows_at(result))
    source = "your budget" if budget is not None else "the tightest location"
    room = f"in {format_size(shown)} ({source})"
    configured = (
        f"the configured shuffle_buffer_size {original:,} "
        f"(~{format_size(each)} + uncertainty{per_host}) "
        f"{'fits' if configured_fits else 'does NOT fit'} {room}; "
    )
    if largest >= NO_LIMIT:
        say(f"FIT BUDGET: {configured}the checkpoint does not grow with the buffer: any size fits")
    elif largest:
        say(
            f"FIT BUDGET: {configured}the largest shuffle_buffer_size whose checkpoint{per_host} "
            f"fits {room} is {largest:,} (~{format_size(result.bytes_for(largest))} each + "
            "uncertainty)"
        )
    else:
        say(f"FIT BUDGET: {configured}no shuffle_buffer_size fits {room}")
    return {
        "budget_bytes": shown,
        "processes_per_host": processes,
        "shuffle_buffer_size": largest,
        "estimated_bytes": result.bytes_for(largest) if 0 < largest < NO_LIMIT else 0,
        "configured_buffer": original,
        "configured_fits": configured_fits,
    }
