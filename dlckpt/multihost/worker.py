"""One process of a multi-host run: `python -m dlckpt.multihost.worker SPEC INDEX`.

Builds the user's pipeline for its shard, fills it, waits for every peer (a barrier of
files, so all save at once, as a job's processes do at a checkpoint step), saves its
iterator through TensorFlow's gs:// writer under `<run prefix>/process_{i}-of-{n}/`,
restores it in a new process and compares, as the single-process round trip does. Then
reads the same shard again uninterrupted for its elements' fingerprints (the cross-process
checks). Writes `result-{i}.json` next to the barrier; exit 0 whatever the verdict (the
result says it), 2 for bad input, 4 for an unexpected error (its line in the result too).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlckpt.errors import EXIT_ERROR, EXIT_FAILED, EXIT_USAGE, CheckFailed, UsageError
from dlckpt.multihost.layout import Process, element_fingerprints, with_shard

BARRIER_POLL_SECONDS = 0.05
FINGERPRINT_BATCH_LIMIT = 64


class PeerMissing(Exception):
    """A peer never reached the barrier (it died, or the run was stopped)."""


def barrier(folder: Path, process: Process, limit_seconds: float) -> None:
    """Mark this process ready, then wait until all `process.count` are (or ABORT appears).

    Raises PeerMissing naming the processes that did not arrive within `limit_seconds`.
    """
    (folder / f"ready-{process.index}").touch()
    deadline = time.monotonic() + limit_seconds
    while True:
        ready = {int(p.name.split("-")[1]) for p in folder.glob("ready-*")}
        if len(ready) >= process.count:
            return
        if (folder / "ABORT").exists():
            raise PeerMissing("stopped before its save: another process failed (named above)")
        if time.monotonic() > deadline:
            missing = sorted(set(range(process.count)) - ready)
            raise PeerMissing(
                f"processes {missing} did not reach the save within {limit_seconds:.0f} s"
            )
        time.sleep(BARRIER_POLL_SECONDS)


def _sharded_config(spec: dict[str, Any], process: Process) -> DictConfig:
    from hydra.utils import get_object

    from dlckpt.config import load_config

    config_dir = Path(spec["config_dir"]) if spec.get("config_dir") else None
    cfg = load_config(spec["config_name"], list(spec["overrides"]), config_dir)
    node: dict[str, Any] = OmegaConf.to_container(cfg.dataloader, resolve=True)  # type: ignore[assignment]
    try:
        target = get_object(str(node["_target_"]))
    except Exception:  # the builder's own import error is answered when it is built
        target = None
    OmegaConf.set_struct(cfg, False)
    cfg.dataloader = OmegaConf.create(with_shard(node, process, target))
    return cfg


def _fingerprints(cfg: DictConfig, batches: int) -> dict[str, list[str]]:
    """Fingerprints (layout.element_fingerprints) of the shard's first `batches` batches,
    read uninterrupted."""
    from dlckpt.pipeline.build import instantiate_dataset
    from dlckpt.pipeline.tensors import element_leaves

    found: dict[str, list[str]] = {}
    iterator = iter(instantiate_dataset(cfg.dataloader))
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        for key, rows in element_fingerprints(element_leaves(batch)).items():
            found.setdefault(key, []).extend(rows)
    return found


def _file_barrier(spec: dict[str, Any], process: Process) -> Callable[[], None]:
    folder, seconds = Path(spec["barrier_dir"]), float(spec["barrier_seconds"])
    return lambda: barrier(folder, process, seconds)


def run(
    spec: dict[str, Any], process: Process, before_save: Callable[[], None] | None = None
) -> dict[str, Any]:
    """The round trip of one process; its result as written to result-{i}.json.

    `before_save` is the barrier before the save (default: the files under the spec's
    `barrier_dir`, for processes this machine started)."""
    from dlckpt.roundtrip.scenario import round_trip_report, run_round_trip
    from dlckpt.storage.gcs import GcsDestination, make_client, parse_gcs_uri

    cfg = _sharded_config(spec, process)
    destination = GcsDestination(make_client(), parse_gcs_uri(spec["bucket_uri"]))
    lines: list[str] = []
    if before_save is None:
        before_save = _file_barrier(spec, process)
    outcome = run_round_trip(
        cfg,
        scratch_root=None,
        destination=destination,
        run_prefix=f"{spec['run_prefix']}/{process.name}",
        keep=bool(spec["keep"]),
        say=lines.append,
        tensorflow_gcs=True,
        before_save=before_save,
    )
    window = int(cfg.roundtrip.batches_before_save) + outcome.batches_compared
    fingerprints = (
        _fingerprints(cfg, min(window, FINGERPRINT_BATCH_LIMIT)) if outcome.passed else {}
    )
    return {
        "index": process.index,
        "host": process.host,
        "passed": outcome.passed,
        "failure": outcome.failure,
        "lines": lines,
        "fingerprints": fingerprints,
        **round_trip_report(outcome),
    }


def run_and_answer(
    spec: dict[str, Any], process: Process, before_save: Callable[[], None] | None = None
) -> tuple[int, dict[str, Any]]:
    """`run`, with every way it can end as (exit code, result): 0 whatever the verdict (the
    result says it), 2 bad input, 1 a peer that never came, 4 an unexpected error (one line)."""
    index = process.index
    code = 0
    try:
        result = run(spec, process, before_save)
    except UsageError as error:
        code, result = EXIT_USAGE, {"index": index, "passed": False, "failure": str(error)}
    except CheckFailed as error:  # a failed check, said in the result like any other
        result = {"index": index, "passed": False, "failure": str(error)}
    except PeerMissing as error:  # the peer's own failure is the cause the parent names
        code = EXIT_FAILED
        result = {"index": index, "passed": False, "failure": str(error), "peer_missing": True}
    except Exception as error:  # one line in the result; the parent names the process
        text = " ".join(str(error).split())[:300]
        result = {"index": index, "passed": False, "failure": f"{type(error).__name__}: {text}"}
        code = EXIT_ERROR
    result.setdefault("host", process.host)
    result["exit_code"] = code
    return code, result


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    index = int(argv[1])
    process = Process(index, int(spec["count"]), index // int(spec["per_host"]))
    result_path = Path(spec["barrier_dir"]).parent / f"result-{index}.json"
    code, result = run_and_answer(spec, process)
    result_path.write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    from dlckpt.runtime.signals import exit_process

    exit_process(main(sys.argv[1:]))
