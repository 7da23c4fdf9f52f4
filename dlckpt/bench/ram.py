"""A real save's peak memory per buffered element, against the preflight's host-RAM row."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlckpt.bench.child import run_child

# Two buffers, each saved in a fresh process: their difference per element is the buffer's
# cost, free of the process's own memory. Not much smaller: a pipeline with parallel
# producers leaves 10-30 MB of freed memory in their allocator arenas, which would read as
# per-element cost (encoded_frames: 3.9-4.4 KB per element over 2,000-12,000, 2.9 KB over
# 2,000-24,000).
BUFFERS = (4000, 24000)


def save_peak_per_element(
    request: dict[str, Any], workdir: Path, buffers: Sequence[int] = BUFFERS
) -> float | None:
    """Bytes of RSS high-water mark per buffered element over a fill and a save.

    `request` names the config for bench.child (config, overrides, config_dir). Each
    buffer is filled and saved in its own process; the kernel's high-water mark is reset
    just before the fill (bench.child.save). None where it cannot be reset. Raises
    RuntimeError when a child fails. The saves are removed.
    """
    peaks = {}
    for buffer in buffers:
        folder = workdir / f"ram-{buffer}"
        try:
            saved = run_child(
                "save", {**request, "buffer": buffer, "folder": str(folder / "ckpt")}, folder
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if saved["fill_save_peak_bytes"] is None:
            return None
        peaks[buffer] = saved["fill_save_peak_bytes"]
    small, large = min(buffers), max(buffers)
    return (peaks[large] - peaks[small]) / (large - small)
