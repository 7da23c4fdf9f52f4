"""The preflight's advice works: the buffer it suggests passes the preflight at every location.

Every disk (with its rows' share), host RAM and the GCS total for num_hosts are checked
with a real calibration and real free space; the advice is then followed (the rows are
rebuilt for the suggested buffer) and must pass.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest


def _advised(message: str) -> int:
    return int(message.split("dataloader.shuffle_buffer_size=")[1].split(" ")[0].replace(",", ""))


def _with_buffer(result, buffer: int):
    return dataclasses.replace(
        result, tested_buffer=buffer, tested_bytes=result.bytes_for(buffer), locations=[]
    )


@pytest.fixture(scope="module")
def zero_frames(tmp_path_factory: pytest.TempPathFactory):
    """A measured estimate of 256 KB zero frames: ~1 KB each in the checkpoint, 256 KB in RAM."""
    from bench_estimate import shape_config

    from dlckpt.estimate.estimator import estimate

    folder = tmp_path_factory.mktemp("zero")
    cfg = shape_config(
        "zero_frames", folder, ["estimate.cache=false", "estimate.calibration_offsets=[0,64]"]
    )
    return estimate(cfg, scratch_root=folder, say=lambda _: None)


def _follow(result, rows_for, hosts: int = 1) -> tuple[int, list]:
    """Refuse, read the suggested buffer, rebuild the rows for it; return (buffer, new rows)."""
    from dlckpt.errors import PreflightRefusal
    from dlckpt.preflight.locations import check_locations, preflight

    result = dataclasses.replace(result, num_hosts=hosts)
    rows = check_locations(rows_for(result))
    with pytest.raises(PreflightRefusal) as refused:
        preflight(rows, result, rows_for, force=False)
    advised = _advised(str(refused.value))
    assert "fits every location with 10% to spare" in str(refused.value)
    return advised, check_locations(rows_for(_with_buffer(result, advised)))


def test_advice_for_a_buffer_ram_cannot_hold_fits_ram_and_every_disk(zero_frames, tmp_path):
    """100M elements: the disks could take the small checkpoint, RAM cannot hold the buffer."""
    import psutil

    from dlckpt.preflight.locations import RAM, preflight, scenario_locations

    huge = dataclasses.replace(zero_frames, tested_buffer=10**8)
    huge = _with_buffer(huge, 10**8)

    def rows_for(result):
        return scenario_locations("small_buffer", result, scratch_dir=str(tmp_path))

    advised, rows = _follow(huge, rows_for)
    assert preflight(rows, _with_buffer(huge, advised), rows_for, force=False) == []
    ram = next(row for row in rows if row.path == RAM)
    assert ram.required_bytes <= 0.9 * psutil.virtual_memory().available * 1.01
    assert advised * zero_frames.calibration.ram_per_element <= ram.free_bytes


def test_advice_for_a_small_disk_shared_by_two_rows_fits_both(zero_frames, small_disk):
    from dlckpt.preflight.locations import preflight, scenario_locations

    def rows_for(result):
        return scenario_locations(
            "small_buffer", result, scratch_dir=str(small_disk), download_dir=str(small_disk)
        )

    big = _with_buffer(zero_frames, 200_000)
    advised, rows = _follow(big, rows_for, hosts=8)
    assert advised > 0
    assert preflight(rows, _with_buffer(big, advised), rows_for, force=False) == []
    on_disk = [row for row in rows if row.path == str(small_disk)]
    assert len(on_disk) == 2
    # Both copies together, plus the estimate's stated ±, within 90% of the disk.
    margin = 1 + zero_frames.uncertainty_for(advised)
    assert (
        sum(row.required_bytes for row in on_disk) * margin <= 0.9 * on_disk[0].free_bytes * 1.001
    )
    # The GCS total scales with the hosts and sets no limit of its own.
    gcs = next(row for row in rows if row.role.startswith("GCS total"))
    assert gcs.required_bytes == 8 * zero_frames.bytes_for(advised)


def test_tightest_budget_splits_a_disk_between_its_rows(small_disk):
    from dlckpt.preflight.locations import Location, check_locations, tightest_room

    rows = check_locations(
        [Location("a", str(small_disk), 1), Location("b", str(small_disk / "sub"), 1)]
    )
    free = rows[0].free_bytes
    assert tightest_room(rows, margin=0.1) == int(free * 0.9) // 2
    assert list(Path(small_disk).iterdir()) == []
