"""One measurement in a fresh process, so its peak memory is its own: save, restore or fill.

Run as `python -m dlckpt.bench.child REQUEST.json RESULT.json`;
the parent (`run_child`) polls the child's RSS with psutil while it runs.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

POLL_SECONDS = 0.02


def _dataset(request: dict[str, Any], buffer: int) -> Any:
    from dlckpt.config import load_config, with_buffer_size
    from dlckpt.pipeline.build import instantiate_dataset

    folder = request.get("config_dir")
    cfg = load_config(
        request["config"], list(request.get("overrides", [])), Path(folder) if folder else None
    )
    return instantiate_dataset(with_buffer_size(cfg, buffer).dataloader)


def settle(max_seconds: float = 10.0) -> None:
    """Wait until this process stops using CPU (its prefetch buffers are full), at most max_seconds.

    A training job saves while its prefetch buffers are full, so the benchmark saves then
    too; three quiet 0.1 s windows in a row, since a starved process can look idle for one.
    """
    import psutil

    process = psutil.Process()
    deadline = time.monotonic() + max_seconds
    last = sum(process.cpu_times()[:2])
    quiet = 0
    while time.monotonic() < deadline and quiet < 3:
        time.sleep(0.1)
        now = sum(process.cpu_times()[:2])
        quiet = quiet + 1 if now - last < 0.02 else 0
        last = now


def _peak_rss() -> int:
    """The kernel's high-water mark of this process's RSS, in bytes (ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status_bytes(field: str) -> int:
    """A `kB` line of /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def _reset_peak_rss() -> bool:
    """Set the kernel's RSS high-water mark to the current RSS (Linux clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def save(request: dict[str, Any]) -> dict[str, Any]:
    """Fill a `buffer`-element shuffle buffer, wait for the prefetch to settle, save once.

    `fill_save_peak_bytes` is how far the kernel's RSS high-water mark rose from just
    before the fill to the end of the save (None where it cannot be reset): the buffer
    and the save's working memory, without the start-up peaks of the process itself.
    """
    import psutil

    from dlckpt.ckpt_io import save_iterator

    dataset = _dataset(request, request["buffer"])
    rss_built = psutil.Process().memory_info().rss
    reset = _reset_peak_rss()
    rss_reset = _status_bytes("VmRSS")
    started = time.perf_counter()
    iterator = iter(dataset)
    next(iterator)  # the shuffle buffer fills before the first batch leaves it
    fill_seconds = time.perf_counter() - started
    settle()
    rss_filled = psutil.Process().memory_info().rss
    saved = save_iterator(iterator, Path(request["folder"]))
    return {
        "fill_save_peak_bytes": _status_bytes("VmHWM") - rss_reset if reset else None,
        "bytes": saved.bytes,
        "files": saved.files,
        "save_seconds": saved.save_seconds,
        "fill_seconds": fill_seconds,
        "rss_built_bytes": rss_built,
        "rss_filled_bytes": rss_filled,
        "peak_rss_kernel_bytes": _peak_rss(),
    }


def restore(request: dict[str, Any]) -> dict[str, Any]:
    """Restore the iterator saved at `prefix` into a new one; time it and its first batch."""
    from dlckpt.ckpt_io import restore_iterator

    dataset = _dataset(request, request["buffer"])
    started = time.perf_counter()
    iterator = restore_iterator(dataset, request["prefix"])
    restore_seconds = time.perf_counter() - started
    next(iterator)
    return {
        "restore_seconds": restore_seconds,
        "first_batch_seconds": time.perf_counter() - started - restore_seconds,
        "peak_rss_kernel_bytes": _peak_rss(),
    }


def _first_batch_seconds(request: dict[str, Any], buffer: int) -> float:
    dataset = _dataset(request, buffer)
    started = time.perf_counter()
    next(iter(dataset))
    return time.perf_counter() - started


def fill(request: dict[str, Any]) -> dict[str, Any]:
    """Fill rate in elements/second: (time to the first batch at a buffer - at 1) per element.

    Both times include building the iterator and the first batch's own elements, so the
    difference is the time to put buffer - 1 more elements into the shuffle buffer. The
    buffer starts at `buffer` and grows 4x (up to `max_buffer`) until that difference
    reaches `min_seconds`, so start-up noise does not swamp it. A repeat whose
    difference is not positive gives no rate (it could not be told from noise).
    """
    buffer = min(request["buffer"], request["max_buffer"])
    while True:
        one = _first_batch_seconds(request, 1)
        full = _first_batch_seconds(request, buffer)
        if full - one >= request["min_seconds"] or buffer >= request["max_buffer"]:
            break
        buffer = min(buffer * 4, request["max_buffer"])
    seconds = {"one": [one], "full": [full]}
    for _ in range(request["repeats"] - 1):
        seconds["one"].append(_first_batch_seconds(request, 1))
        seconds["full"].append(_first_batch_seconds(request, buffer))
    rates = [
        (buffer - 1) / (full - one)
        for one, full in zip(seconds["one"], seconds["full"], strict=True)
        if full > one and buffer > 1
    ]
    return {
        "buffer": buffer,
        "elements_per_second": rates,
        **{f"{key}_seconds": values for key, values in seconds.items()},
    }


MODES = {"save": save, "restore": restore, "fill": fill}


def run_child(
    mode: str, request: dict[str, Any], workdir: Path, timeout: float = 1800
) -> dict[str, Any]:
    """Run one measurement in a new Python process; adds `peak_rss_bytes` polled with psutil.

    Raises RuntimeError naming the mode and the child's last lines when it fails.
    """
    import psutil

    workdir.mkdir(parents=True, exist_ok=True)
    request_path = workdir / f"{mode}-request.json"
    result_path = workdir / f"{mode}-result.json"
    request_path.write_text(json.dumps({**request, "mode": mode}))
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dlckpt.bench.child", str(request_path), str(result_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = [0]
    done = threading.Event()

    def poll() -> None:
        watched = psutil.Process(process.pid)
        while not done.is_set():
            try:
                peak[0] = max(peak[0], watched.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(POLL_SECONDS)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise RuntimeError(f"bench child {mode}: still running after {timeout:.0f} s") from None
    finally:
        done.set()
        poller.join()
    if process.returncode != 0 or not result_path.exists():
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"bench child {mode} exited {process.returncode}: {tail}")
    result: dict[str, Any] = json.loads(result_path.read_text())
    result["peak_rss_bytes"] = peak[0]
    return result


def _main(argv: list[str]) -> int:
    from dlckpt.runtime.tf_import import import_tensorflow

    import_tensorflow()
    request = json.loads(Path(argv[0]).read_text())
    result = MODES[request["mode"]](request)
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
