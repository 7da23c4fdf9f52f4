"""The whole job's checkpoint figures: per process, per host, in the bucket (issue 23, item 6)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from dlckpt.config import EstimateSettings, estimate_settings
from dlckpt.errors import UsageError
from dlckpt.estimate.estimator import EstimateResult
from dlckpt.preflight.locations import bucket_role, configured_locations
from dlckpt.preflight.run import job_sizes, job_sizes_line


def _estimate(each: int, hosts: int, kept: int) -> EstimateResult:
    return EstimateResult(
        method="formula", original_buffer=1000, tested_buffer=100, original_bytes=each,
        tested_bytes=each // 10, formula_original_bytes=each, formula_tested_bytes=each // 10,
        bytes_per_sample=each // 1500, bytes_per_sample_source="test", num_hosts=hosts,
        checkpoints_in_bucket=kept,
    )  # fmt: skip


def _settings(**values: object):
    return estimate_settings(OmegaConf.create({**vars(EstimateSettings()), **values}))


def test_max_to_keep_adds_the_checkpoint_being_written():
    assert _settings().checkpoints_in_bucket == 1  # unset: one checkpoint, rewritten
    assert _settings(max_to_keep=1).checkpoints_in_bucket == 2
    assert _settings(max_to_keep=5).checkpoints_in_bucket == 6


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "3"])
def test_a_bad_max_to_keep_is_one_line(value):
    with pytest.raises(UsageError) as caught:
        _settings(max_to_keep=value)
    assert str(caught.value).startswith(f"estimate.max_to_keep={value!r}: expected an integer")
    assert "\n" not in str(caught.value)


def test_per_process_per_host_and_bucket_multiply_as_the_job_writes():
    result = _estimate(each=3_000_000, hosts=4, kept=3)
    job = job_sizes(result, processes=8)
    assert (job["per_process"], job["per_host"]) == (3_000_000, 24_000_000)
    assert job["bucket"] == 3_000_000 * 8 * 4 * 3
    line = job_sizes_line(result, 8, job)
    assert line.startswith("JOB CHECKPOINTS at shuffle_buffer_size 1,000: 2.9 MiB per process; ")
    assert "22.9 MiB per host (8 staged at once in its temp folder)" in line
    assert line.endswith(
        "274.7 MiB in the bucket (4 hosts × 8 processes × 3 checkpoints: max_to_keep 2 + the "
        "one being written)"
    )
    [bucket] = [row for row in configured_locations(result, 8) if row.role.startswith("GCS")]
    assert bucket.required_bytes == job["bucket"]
    assert bucket.role == bucket_role(4, 8, 3)


def test_one_host_one_process_one_checkpoint_is_the_checkpoint():
    job = job_sizes(_estimate(each=1000, hosts=1, kept=1), processes=1)
    assert job["per_process"] == job["per_host"] == job["bucket"] == 1000
    assert bucket_role(1, 1, 1) == "GCS total (1 host)"


@pytest.mark.parametrize("value", [0, -3, True])
def test_a_bad_processes_per_host_is_one_line(value):
    with pytest.raises(UsageError) as caught:  # checked where the config is read
        _settings(processes_per_host=value)
    assert str(caught.value).startswith(f"estimate.processes_per_host={value!r}: expected an")


def test_a_multi_host_run_counts_two_tensorflow_processes_per_process_in_ram():
    """130 stand-in processes (`--hosts 65`) ran this machine out of memory: the RAM row
    counts each process's TensorFlow and its restore process, so the preflight refuses."""
    from dlckpt.preflight.locations import (
        RAM,
        TENSORFLOW_PROCESS_RAM_BYTES,
        check_locations,
        multi_host_locations,
    )

    result = _estimate(each=300_000, hosts=1, kept=1)
    [four] = [r for r in multi_host_locations(result, 4, embedded_dir=None, gcs_uri="gs://b")
              if r.path == RAM]  # fmt: skip
    assert four.role == "host RAM (4 processes: buffers, 2 TensorFlow processes each)"
    assert four.required_bytes == 4 * (result.ram_bytes_for(100) + 2 * TENSORFLOW_PROCESS_RAM_BYTES)
    many = multi_host_locations(result, 130, embedded_dir=None, gcs_uri="gs://b")
    [ram] = [row for row in check_locations(many) if row.path == RAM]
    assert ram.required_bytes > 150 * 2**30


def test_the_fits_line_gives_the_hosts_figure_when_it_holds_several_checkpoints(tmp_path):
    from dlckpt.preflight.locations import Location, check_locations, configured_fit_line

    result = _estimate(each=1_000_000, hosts=1, kept=1)
    role = "TensorFlow temp folder for gs:// writes (TMPDIR, 4 processes)"
    rows = check_locations([Location(role, str(tmp_path), 4_000_000)])
    line = configured_fit_line(rows, result)
    assert line.startswith(
        "✓ THE CONFIGURED BUFFER FITS: shuffle_buffer_size 1,000 writes a 976.6 KiB checkpoint "
        f"per process (3.8 MiB per host), which fits {tmp_path} ("
    )
    one = check_locations([Location(role, str(tmp_path), 1_000_000)])
    assert "writes a 976.6 KiB checkpoint, which fits" in configured_fit_line(one, result)


def test_a_full_disk_is_not_blamed_on_the_embedded_servers_ram(tmp_path):
    """A new-user probe on a 3 MB tmpfs was told no buffer fits because the embedded server
    holds an upload in RAM, while RAM had room and the disk did not."""
    from dlckpt.preflight.locations import RAM, Location, check_locations, refusal_message

    result = _estimate(each=1_000_000, hosts=1, kept=1)

    def rows_at(sized: object) -> list[Location]:
        return [
            Location("embedded GCS server storage", str(tmp_path), 10**18, variable="TMPDIR"),
            Location("embedded GCS server RAM (holds an upload whole)", RAM, 1),
        ]

    rows = check_locations(rows_at(result))
    message = refusal_message(rows[0], rows, result, rows_at)
    assert "no buffer size fits every location" in message
    assert "holds an upload whole in RAM" not in message
    assert message.startswith(f"embedded GCS server storage {tmp_path}: needs ")


def test_every_hosts_temp_folder_is_held_to_its_processes_checkpoints():
    """Under a launcher each process reports its temp folder; process 0 sums the processes
    that share one (host, folder) and says which cannot hold them at the configured buffer."""
    from dlckpt.multihost.launched import check_host_folders
    from dlckpt.multihost.run import Job

    lines: list[str] = []
    job = Job("c", None, [], hosts=2, per_host=2, restore_processes=None, keep=False,
              timeout_seconds=1, say=lines.append)  # fmt: skip

    def seen(host: int, path: str, free: int) -> dict[str, object]:
        folder = {"path": path, "source": "TMPDIR", "free_bytes": free, "hostname": f"n{host}"}
        return {"host": host, "temp_folder": folder}

    each = 10**9
    results = {0: seen(0, "/tmp", 5 * each), 1: seen(0, "/tmp", 4 * each),
               2: seen(1, "/scratch", 3 * each), 3: seen(1, "/scratch", 3 * each), 4: {}}  # fmt: skip
    rows = check_host_folders(job, results, _estimate(each, hosts=2, kept=1))
    by_host = {row["host"]: row for row in rows}
    # Two processes per folder: 2 GB needed; the least free of the two reports counts.
    assert (by_host[0]["needed_bytes"], by_host[0]["free_bytes"]) == (2 * each, 4 * each)
    assert all(row["fits"] for row in rows) and len(rows) == 2
    assert lines == [
        "✓ Every host's TensorFlow temp folder holds its processes' checkpoints at "
        "shuffle_buffer_size 1,000: 2 folders, the tightest /scratch on host 1 (2.8 GiB free "
        "for 1.9 GiB)"
    ]
    lines.clear()
    results[3] = seen(1, "/scratch", each)  # host 1's second report: 1 GB free
    rows = check_host_folders(job, results, _estimate(each, hosts=2, kept=1))
    assert [row["fits"] for row in rows] == [True, False]
    assert lines == [
        "⚠ HOST 1'S TEMP FOLDER CANNOT HOLD ITS CHECKPOINTS AT THE CONFIGURED BUFFER: /scratch "
        "(TMPDIR) on n1 has 953.7 MiB free; its 2 processes would stage 1.9 GiB at once at "
        "shuffle_buffer_size 1,000: the job's saves would fail there with `Could not append "
        "to the internal temporary file`"
    ]


def test_a_run_of_the_configured_buffer_that_cannot_fit_says_whether_training_would(tmp_path):
    """A new user's check: `--buffer-size` at the configured size on a disk that holds
    training's one staged save but not the test's scratch, temp and download folders was
    told "THE CONFIGURED BUFFER DOES NOT FIT", naming the test's own scratch folder under
    the table of training's folders, all OK."""
    from dlckpt.preflight.locations import Location, check_locations, configured_fit_line

    result = _estimate(each=1_000_000, hosts=1, kept=1)
    training = check_locations(
        [Location("TensorFlow temp folder for gs:// writes (TMPDIR)", str(tmp_path), 1_000_000)]
    )
    run = check_locations([
        Location("scratch folder (the saved checkpoint)", str(tmp_path), 2**45),
        Location("download folder (restore from GCS)", str(tmp_path), 2**45),
    ])  # fmt: skip
    line = configured_fit_line(training, result, run_rows=run)
    assert line.startswith(
        "⚠ TRAINING'S SAVE OF THE CONFIGURED BUFFER FITS, THIS TEST'S RUN OF IT DOES NOT: "
        f"shuffle_buffer_size 1,000: this run's scratch folder (the saved checkpoint) {tmp_path} "
        "needs 64.0 TiB (2 rows on this disk), "
    ), line
    assert "✓" not in line
    # Training's own row failing is still the configured buffer not fitting.
    huge = check_locations([Location("TensorFlow temp folder (TMPDIR)", str(tmp_path), 2**62)])
    assert configured_fit_line(huge, result, run_rows=run).startswith(
        "⚠ THE CONFIGURED BUFFER DOES NOT FIT: shuffle_buffer_size 1,000: TensorFlow temp "
    )
