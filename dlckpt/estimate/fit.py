"""--fit-budget: does the configured shuffle buffer fit a budget, and the largest that does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlckpt.units import format_size


def fit_budget(
    result: Any,
    budget: int | None,
    tightest: int,
    say: Callable[[str], None],
    ram_limit: int | None = None,
) -> dict[str, Any]:
    """--fit-budget: whether the configured buffer fits, then the largest buffer that does.

    `ram_limit` (the largest buffer host RAM holds) caps the answer, so following it passes
    the preflight's RAM row too.
    """

    source = "your budget" if budget is not None else "the tightest location"
    budget = budget if budget is not None else tightest
    original = result.original_buffer
    configured_need = result.bytes_for(original) * (1 + (result.uncertainty or 0.0))
    configured_fits = configured_need <= budget
    largest = result.largest_buffer_within(budget)
    largest = largest if ram_limit is None else min(largest, ram_limit)
    verdict = "fits" if configured_fits else "does NOT fit"
    configured = (
        f"the configured shuffle_buffer_size {original:,} "
        f"(~{format_size(result.bytes_for(original))} + uncertainty) {verdict} in "
        f"{format_size(budget)} ({source}); "
    )
    if largest:
        say(
            f"FIT BUDGET: {configured}the largest shuffle_buffer_size whose checkpoint fits in "
            f"{format_size(budget)} ({source}) is {largest:,} "
            f"(~{format_size(result.bytes_for(largest))} + uncertainty)"
        )
    else:
        say(f"FIT BUDGET: {configured}no shuffle_buffer_size fits in {format_size(budget)}")
    return {
        "budget_bytes": budget,
        "shuffle_buffer_size": largest,
        "estimated_bytes": result.bytes_for(largest) if largest else 0,
        "configured_buffer": original,
        "configured_fits": configured_fits,
    }
