"""The measured estimate's cache: one validated JSON file per config hash, dropped when wrong.

An entry is trusted only when it parses, carries this estimator's version and every
field has the type and range a calibration produces; anything else is removed and the
pipeline is measured again. A cross-check miss (see estimate.estimator.cross_check) also drops it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dlckpt.estimate.model import Calibration

# Bump when the calibration procedure changes: old cache entries then no longer match.
# 8: the shuffle buffer is measured isolated from the pipeline's other buffers (issue 9).
# 26: a concatenate's inputs sampled each; 25: several sized shuffles on the main line
# 23: a shuffle built with a floor or a cap; 22: buffers sized from B; 21: RAM of unseen buffers
ESTIMATOR_VERSION = 26


def cache_dir() -> Path:
    """$XDG_CACHE_HOME (else ~/.cache)/dataloader-checkpoint-testing/estimates."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dataloader-checkpoint-testing" / "estimates"


def config_hash(cfg: Any) -> str:
    """sha256 of the resolved dataloader and estimate settings, the pipeline's source, TF, us."""
    from omegaconf import OmegaConf

    from dlckpt.runtime.tf_import import import_tensorflow

    dataloader = dict(OmegaConf.to_container(cfg.dataloader, resolve=True))  # type: ignore[arg-type]
    # The calibration never fills the configured buffer, so its size is not part of the key:
    # trying other buffer sizes (or --fit-budget) reuses the measurement.
    dataloader.pop("shuffle_buffer_size", None)
    estimate = dict(OmegaConf.to_container(cfg.estimate, resolve=True))  # type: ignore[arg-type]
    # Settings that change only the formula, the hosts, the processes per host or the
    # checkpoints kept (multipliers of the per-process checkpoint) or the time limit, not
    # what is measured.
    for key in (
        "bytes_per_sample",
        "formula_overhead",
        "num_hosts",
        "processes_per_host",
        "max_to_keep",
        "cache",
    ):
        estimate.pop(key, None)
    estimate.pop("calibration_timeout_seconds", None)
    resolved = {
        "dataloader": dataloader,
        "estimate": estimate,
        "batches_before_save": cfg.roundtrip.get("batches_before_save"),
        "estimator_version": ESTIMATOR_VERSION,
        "tensorflow": import_tensorflow().__version__,
        "pipeline_source": _target_source_digest(str(cfg.dataloader.get("_target_", ""))),
    }
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


def _target_source_digest(target: str) -> str:
    """The pipeline's code is part of the key: editing the builder invalidates the cache."""
    module = target.rpartition(".")[0]
    try:
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return ""
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()


def _entry_path(key: str) -> Path:
    return cache_dir() / f"{key}.json"


def load_cached(key: str) -> Calibration | None:
    """The cached calibration for `key`, or None; an entry that fails validation is removed."""
    path = _entry_path(key)
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        data = json.loads(text)
        problem = entry_problem(data)
        calibration = None if problem else Calibration(**data["calibration"])
    except (ValueError, TypeError, KeyError) as error:
        problem, calibration = f"unreadable ({type(error).__name__})", None
    if calibration is None:
        drop_cached(key)
    return calibration


def store_cached(key: str, calibration: Calibration) -> None:
    """Write the entry atomically (temp file, rename); an unwritable cache is skipped."""
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{key}.{os.getpid()}.tmp"
        entry = {"estimator_version": ESTIMATOR_VERSION, "calibration": asdict(calibration)}
        temporary.write_text(json.dumps(entry))
        temporary.replace(_entry_path(key))
    except OSError:
        pass  # a cache that cannot be written only costs the next run its speed


def drop_cached(key: str) -> bool:
    """Remove the entry for `key`; True when there was one."""
    try:
        _entry_path(key).unlink()
        return True
    except OSError:
        return False


def _number(value: Any, minimum: float = 0.0) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= minimum
    )


def entry_problem(data: Any) -> str | None:
    """What is wrong with a cache entry (a parsed JSON value), or None when it can be trusted."""
    if not isinstance(data, dict) or data.get("estimator_version") != ESTIMATOR_VERSION:
        return "written by another estimator version"
    cal = data.get("calibration")
    if not isinstance(cal, dict):
        return "no calibration"
    checks: dict[str, bool] = {
        "anchors": isinstance(cal.get("anchors"), list)
        and len(cal["anchors"]) >= 1
        and all(
            isinstance(a, list) and len(a) == 2 and _number(a[0], 1) and _number(a[1], 1)
            for a in cal["anchors"]
        ),
        "chunks": isinstance(cal.get("chunks"), list)
        and all(
            isinstance(c, list)
            and len(c) == 3
            and _number(c[0])
            and _number(c[1], 1)
            and _number(c[2])
            for c in cal["chunks"]
        ),
        "constant": isinstance(cal.get("constant"), bool),
        "slot_bytes": _number(cal.get("slot_bytes")),
        "raw_element_bytes": _number(cal.get("raw_element_bytes")),
        "memory_element_bytes": _number(cal.get("memory_element_bytes", 0)),
        "tensors_per_element": _number(cal.get("tensors_per_element", 0)),
        "sample_bytes": _number(cal.get("sample_bytes")),
        "seconds": _number(cal.get("seconds")),
        "anchor_spread": _number(cal.get("anchor_spread")),
        "extra_per_element": _number(cal.get("extra_per_element", 0.0)),
        "extra_error": _number(cal.get("extra_error", 0.0)),
        "stream_elements": cal.get("stream_elements") is None
        or _number(cal.get("stream_elements"), 1),
        "notes": isinstance(cal.get("notes"), list),
        "element_sizes": isinstance(cal.get("element_sizes", []), list)
        and all(
            isinstance(sizes, list) and all(_number(n) for n in sizes)
            for sizes in cal.get("element_sizes", [])
        ),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        return f"bad field(s): {', '.join(bad)}"
    if not cal["constant"] and not cal["chunks"]:
        return "a growing checkpoint without per-element measurements"
    return None
