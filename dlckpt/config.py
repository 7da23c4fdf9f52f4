"""Hydra config loading: the one loader the scripts and the tests share.

A config is composed with Hydra's compose API (nothing runs at import). The project's
settings schema is composed first, then the user's config on top, then `key=value`
overrides, so a user's file may hold only a `dataloader` node and every other setting
keeps the project's default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from dlckpt.errors import UsageError
from dlckpt.paths import PROJECT_CONF_DIR
from dlckpt.units import format_size

_SCHEMA_NAME = "_dlckpt_schema"
_ROOT_NAME = "_dlckpt_root"


@dataclass
class EstimateSettings:
    # Bytes of one sample for the README's formula; None measures one sample of the pipeline.
    bytes_per_sample: int | None = None
    # The README's rule of thumb: checkpoint = buffer x sample bytes x 1.5.
    formula_overhead: float = 1.5
    # Each host of a multi-host job saves its own iterator checkpoint.
    num_hosts: int = 1
    # Processes on one host that each save their own iterator at once (one per accelerator);
    # None: `make diagnose` counts the accelerators it finds (the estimate tables assume 1).
    processes_per_host: int | None = None
    # CheckpointManager(max_to_keep=N): the bucket holds N checkpoints per process, and one
    # more while the next is written. None: one checkpoint, rewritten in place.
    max_to_keep: int | None = None
    # Buffer sizes the measured estimate fills, saves and fits a line through.
    calibration_buffer_sizes: list[int] = field(default_factory=lambda: [8, 32, 64])
    # Where the calibration samples the stream: one chunk of elements from each offset, so
    # the per-element figure holds data from across the stream (see estimate.calibrate.py).
    calibration_offsets: list[int] = field(
        default_factory=lambda: [0, 64, 128, 256, 512, 1024, 2048, 4096]
    )
    # Reuse a measurement keyed by a hash of the resolved config and the pipeline's source.
    cache: bool = True
    # The calibration stops (exit 2, one line) when the pipeline shows no progress this long.
    calibration_timeout_seconds: float = 300.0


@dataclass
class RoundTripSettings:
    # The buffer the small-buffer test runs with (the production value stays in the config).
    small_buffer_size: int = 100
    batches_before_save: int = 3
    # The fewest batches compared after the restore; the window usually needs more (see window).
    batches_to_compare: int = 5
    # Batches compared beyond the buffers' volume at save time, so elements drawn fresh from
    # upstream after the restore reach the comparison (see roundtrip.window.py).
    fresh_batches: int = 10
    # ...and at least this many elements' worth of batches (matters for small batches).
    fresh_elements: int = 100
    # Time budget (seconds) for reading the comparison window from the original iterator;
    # when it runs out the window is cut and the run says so.
    window_seconds: float = 300.0
    # The restore process is stopped after this many seconds (a hung restore is a failure).
    restore_timeout_seconds: float = 1800.0


@dataclass
class Settings:
    dataloader: dict[str, Any] = field(default_factory=dict)
    estimate: EstimateSettings = field(default_factory=EstimateSettings)
    roundtrip: RoundTripSettings = field(default_factory=RoundTripSettings)


def available_config_names(config_dirs: list[Path]) -> list[str]:
    names = {p.stem for d in config_dirs if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


# A dataloader config is a few KB; a bound keeps a wrong file (a dataset, a log) from being
# parsed for minutes before its first unknown key is named.
MAX_CONFIG_BYTES = 1 << 20


def check_config_file(path: Path) -> None:
    """Raises UsageError (one line) for a config file over MAX_CONFIG_BYTES or not UTF-8."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UsageError(
            f"config {path} is {format_size(size)}; a dataloader config is a few KB "
            f"(expected a YAML file under {format_size(MAX_CONFIG_BYTES)})"
        )
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"config {path}: not UTF-8 at byte {error.start} (0x{error.object[error.start]:02x}); "
            "expected a UTF-8 YAML file (re-save it as UTF-8)"
        ) from None


def load_config(
    config_name: str = "config",
    overrides: list[str] | None = None,
    config_dir: Path | None = None,
) -> DictConfig:
    """Compose `config_name` from `config_dir` (if given) and the project's `conf/`.

    Raises UsageError with one line for a missing folder, an unknown config name,
    an unknown key or a bad override.
    """
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    search_dirs = [PROJECT_CONF_DIR]
    if config_dir is not None:
        config_dir = Path(config_dir).expanduser().resolve()
        if not config_dir.is_dir():
            raise UsageError(
                f"--config-dir {config_dir}: no such folder (expected a folder of .yaml configs)"
            )
        search_dirs.insert(0, config_dir)
    names = available_config_names(search_dirs)
    if config_name not in names:
        raise UsageError(
            f"--config-name {config_name!r}: no such config; available: {', '.join(names)}"
        )
    chosen = next(
        d / f"{config_name}.yaml" for d in search_dirs if (d / f"{config_name}.yaml").is_file()
    )
    check_config_file(chosen)

    store = ConfigStore.instance()
    store.store(name=_SCHEMA_NAME, node=Settings)
    # The root composes schema, then the user's config, so the user's values win; the
    # search path puts the user's folder first and the project's conf/ beside it.
    store.store(
        name=_ROOT_NAME,
        node={
            "defaults": [_SCHEMA_NAME, config_name, "_self_"],
            "hydra": {"searchpath": [f"file://{PROJECT_CONF_DIR}"]},
        },
    )
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(search_dirs[0])):
            cfg = compose(config_name=_ROOT_NAME, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as exc:
        raise UsageError(f"config {config_name!r}: {_one_line(exc)}") from None
    if "_target_" not in cfg.dataloader:
        raise UsageError(
            f"config {config_name!r}: dataloader._target_ is missing "
            "(expected the import path of a function that returns a tf.data.Dataset)"
        )
    validate_settings(cfg)
    return cfg


# Numeric settings and their ranges: (minimum, maximum or None, what the number is).
# The estimate's calibration lists, num_hosts and timeout are checked by estimate_settings.
SETTING_RANGES: dict[str, tuple[float, float | None, str]] = {
    "roundtrip.small_buffer_size": (1, None, "the shuffle buffer of the small-buffer test"),
    "roundtrip.batches_before_save": (0, None, "batches read before the save"),
    "roundtrip.batches_to_compare": (1, None, "batches compared after the restore"),
}
# The reference builder's numeric keyword arguments (pipeline.robot.build_robot_dataset); the
# same names mean the same in most loaders, so they are checked whatever the builder.
# -1 is tf.data.AUTOTUNE where a parallelism or prefetch depth is meant.
DATALOADER_INT_RANGES: dict[str, tuple[int, int | None, tuple[int, ...]]] = {
    "batch_size": (1, None, ()),
    "image_size": (1, None, ()),
    "wrist_image_size": (0, None, ()),
    "window_size": (1, None, ()),
    "jpeg_quality": (1, 100, ()),
    "num_episodes": (1, None, ()),
    "steps_per_episode": (1, None, ()),
    "proprio_dim": (1, None, ()),
    "action_dim": (1, None, ()),
    "num_parallel_calls": (1, None, (-1,)),
    "prefetch_batches": (0, None, (-1,)),
}


def validate_settings(cfg: DictConfig) -> None:
    """Every numeric setting in range, checked once where the config is read: UsageError (exit 2).

    roundtrip.* as SETTING_RANGES; estimate.formula_overhead > 0; estimate.bytes_per_sample
    unset or >= 1; the dataloader's known numeric arguments as DATALOADER_INT_RANGES.
    """
    for name, (low, high, meaning) in SETTING_RANGES.items():
        section, key = name.split(".")
        _check_int(cfg[section].get(key), name, low, high, (), meaning)
    overhead = cfg.estimate.get("formula_overhead")
    if (
        isinstance(overhead, bool)
        or not isinstance(overhead, (int, float))
        or not 0 < overhead < float("inf")
    ):
        raise UsageError(
            f"estimate.formula_overhead={overhead!r}: expected a number above 0, e.g. 1.5 "
            "(the README formula's multiplier)"
        )
    sample = cfg.estimate.get("bytes_per_sample")
    if sample is not None:
        _check_int(sample, "estimate.bytes_per_sample", 1, None, (), "bytes of one sample")
    for key, (low, high, special) in DATALOADER_INT_RANGES.items():
        if key in cfg.dataloader:
            _check_int(cfg.dataloader[key], f"dataloader.{key}", low, high, special, "")
    estimate_settings(cfg.estimate)


def _check_int(
    value: Any, name: str, low: float, high: float | None, special: tuple[int, ...], meaning: str
) -> None:
    in_range = (
        not isinstance(value, bool)
        and isinstance(value, int)
        and (value in special or (value >= low and (high is None or value <= high)))
    )
    if in_range:
        return
    expected = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    if special:
        expected += " or " + " or ".join(f"{s} (tf.data.AUTOTUNE)" for s in special)
    suffix = f" ({meaning})" if meaning else ""
    raise UsageError(f"{name}={value!r}: expected {expected}{suffix}")


# estimate.* counts that may be unset (null), and what each counts.
OPTIONAL_ESTIMATE_COUNTS = {
    "processes_per_host": "the processes on one host that each save a checkpoint; or null",
    "max_to_keep": "your CheckpointManager's max_to_keep; or null: one checkpoint, rewritten",
}


class CalibrationSettings(NamedTuple):
    """The `estimate.*` settings the calibration reads, validated."""

    buffer_sizes: list[int]
    offsets: list[int]
    num_hosts: int
    timeout_seconds: float
    max_to_keep: int | None = None

    @property
    def checkpoints_in_bucket(self) -> int:
        """Per process, at the bucket's peak: max_to_keep, plus the one being written."""
        return 1 if self.max_to_keep is None else self.max_to_keep + 1


def estimate_settings(estimate_cfg: Any) -> CalibrationSettings:
    """The `estimate.*` settings the calibration reads; UsageError (exit 2) when malformed."""
    sizes = _int_list(
        estimate_cfg.get("calibration_buffer_sizes"), "estimate.calibration_buffer_sizes", 1
    )
    offsets = _int_list(estimate_cfg.get("calibration_offsets"), "estimate.calibration_offsets", 0)
    hosts = estimate_cfg.get("num_hosts")
    _check_int(hosts, "estimate.num_hosts", 1, None, (), "the hosts that each save a checkpoint")
    for key, meaning in OPTIONAL_ESTIMATE_COUNTS.items():
        if estimate_cfg.get(key) is not None:
            _check_int(estimate_cfg.get(key), f"estimate.{key}", 1, None, (), meaning)
    kept = estimate_cfg.get("max_to_keep")
    timeout = estimate_cfg.get("calibration_timeout_seconds", 300)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise UsageError(
            f"estimate.calibration_timeout_seconds={timeout!r}: expected a number of seconds "
            "above zero, e.g. 300"
        )
    return CalibrationSettings(
        sorted(set(sizes)), sorted(set(offsets)), hosts, float(timeout), kept
    )


def _int_list(value: Any, name: str, minimum: int) -> list[int]:
    kind = "positive integers" if minimum == 1 else "integers >= 0"
    example = "[8, 16, 32, 64]" if minimum == 1 else "[0, 256, 1024]"
    try:
        items = list(value)
    except TypeError:
        raise UsageError(f"{name}={value!r}: expected a list of {kind}, e.g. {example}") from None
    if not items or any(
        isinstance(i, bool) or not isinstance(i, int) or i < minimum for i in items
    ):
        raise UsageError(
            f"{name}={list(items)!r}: expected a non-empty list of {kind}, e.g. {example}"
        )
    return [int(i) for i in items]


def shuffle_buffer_size(cfg: DictConfig) -> int:
    value = cfg.dataloader.get("shuffle_buffer_size")
    return parse_positive_int(value, "dataloader.shuffle_buffer_size")


def parse_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UsageError(f"{name}={value!r}: expected a positive integer, e.g. 100")
    try:
        number = int(str(value).replace("_", "").replace(",", ""))
    except ValueError:
        raise UsageError(f"{name}={value!r}: expected a positive integer, e.g. 100") from None
    if number < 1:
        raise UsageError(f"{name}={value!r}: expected a positive integer, e.g. 100")
    return number


def with_buffer_size(cfg: DictConfig, buffer_size: int) -> DictConfig:
    """A copy of `cfg` with another shuffle buffer; `cfg` (and its file) stay as they are."""
    copy = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(copy, dict)
    copy["dataloader"]["shuffle_buffer_size"] = buffer_size
    return OmegaConf.create(copy)


def _one_line(exc: BaseException | None) -> str:
    parts: list[str] = []
    while exc is not None and len(parts) < 3:
        text = " ".join(str(exc).split())
        if text and text not in parts:
            parts.append(text)
        exc = exc.__cause__
    return ": ".join(parts)
