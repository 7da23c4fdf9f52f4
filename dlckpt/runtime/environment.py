"""Which Python, TensorFlow and environment run the tool: the first line and the report.

A checkpoint's format, the iterator state and TensorFlow's gs:// writer all come from the
TensorFlow that runs the test, so a verdict is only about the user's job when it ran in the
user's environment. This module says which one ran, and refuses (exit 2, one line) a
TensorFlow older than the oldest version the tool is tested on. Standard library only: the
TensorFlow version is read from the installed package's metadata, without importing it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlckpt.errors import UsageError
from dlckpt.runtime.layer import MARKER as LAYER_MARKER

# The versions CI runs (uv.lock's tf-oldest and tf-newest groups). Older is refused: the
# tests never ran there. Newer runs, with a note: refusing a release the day it ships would
# leave a user with nothing, and pip must never downgrade a user's TensorFlow to install us.
OLDEST_TENSORFLOW = (2, 15)
NEWEST_TESTED_TENSORFLOW = (2, 21)
# The distributions that install the `tensorflow` module (the CPU-only, nightly and
# platform builds have their own names; conda's package is called tensorflow).
TENSORFLOW_DISTRIBUTIONS = (
    "tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly", "tf-nightly-cpu",
    "tensorflow-macos", "tensorflow-intel", "tensorflow-aarch64", "intel-tensorflow",
)  # fmt: skip


@dataclass(frozen=True)
class Runtime:
    python: str  # the interpreter's path (sys.executable)
    python_version: str  # e.g. "3.11.7"
    environment: str  # sys.prefix: the virtual environment, or the interpreter's own prefix
    layered_on: str | None  # the user's interpreter whose packages a layered env sees
    tensorflow: str | None  # e.g. "2.15.1"; None: not installed
    tensorflow_distribution: str | None  # e.g. "tensorflow-cpu"

    def line(self) -> str:
        """One line: "Runtime: Python 3.11.7 (/x/bin/python) · TensorFlow 2.15.1 · env /x"."""
        where = self.environment
        if self.layered_on:
            where += f", layered on {self.layered_on} (its packages are used)"
        tf = f"TensorFlow {self.tensorflow}" if self.tensorflow else "no TensorFlow"
        return f"Runtime: Python {self.python_version} ({self.python}) · {tf} · environment {where}"

    def as_report(self) -> dict[str, Any]:
        return {
            "python": self.python,
            "python_version": self.python_version,
            "environment": self.environment,
            "layered_on": self.layered_on,
            "tensorflow": self.tensorflow,
            "tensorflow_distribution": self.tensorflow_distribution,
        }


def _tensorflow_version() -> tuple[str | None, str | None]:
    """(version, distribution) of the importable `tensorflow`, or (None, None)."""
    if importlib.util.find_spec("tensorflow") is None:
        return None, None
    for name in TENSORFLOW_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name), name
        except importlib.metadata.PackageNotFoundError:
            continue
    # A build without package metadata (from source, some conda channels): ask the module.
    from dlckpt.runtime.tf_import import import_tensorflow

    return str(import_tensorflow().__version__), None


def _layered_on() -> str | None:
    marker = Path(sys.prefix) / LAYER_MARKER
    try:
        return str(json.loads(marker.read_text())["base_python"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@functools.cache  # one process, one interpreter: run_main and parse_args both ask
def current() -> Runtime:
    version, distribution = _tensorflow_version()
    return Runtime(
        python=sys.executable,
        python_version=".".join(map(str, sys.version_info[:3])),
        environment=sys.prefix,
        layered_on=_layered_on(),
        tensorflow=version,
        tensorflow_distribution=distribution,
    )


def _leading_int(text: str) -> int:
    """The number a version part starts with: "0rc1" -> 0, "22" -> 22."""
    digits = re.match(r"\d+", text)
    return int(digits.group()) if digits else 0


def supported(runtime: Runtime) -> str | None:
    """A note for a TensorFlow newer than any tested, or None.

    Raises UsageError (exit 2, one line) when TensorFlow is missing or older than
    OLDEST_TENSORFLOW: a verdict from there would be about a TensorFlow the tool never ran on.
    """
    # A layer's packages are the user's interpreter's: name the interpreter they asked for.
    python = runtime.layered_on or runtime.python
    oldest = "{}.{}".format(*OLDEST_TENSORFLOW)
    newest = "{}.{}".format(*NEWEST_TESTED_TENSORFLOW)
    if runtime.tensorflow is None:
        raise UsageError(
            f"TensorFlow is not installed for {python} (expected tensorflow>={oldest}: "
            f"run in your training environment, or `pip install 'tensorflow>={oldest}'`)"
        )
    major_minor = tuple(_leading_int(part) for part in runtime.tensorflow.split(".")[:2])
    if major_minor < OLDEST_TENSORFLOW:
        raise UsageError(
            f"TensorFlow {runtime.tensorflow} at {python} is older than the oldest "
            f"supported, {oldest} (expected tensorflow>={oldest}; tested on {oldest} and {newest})"
        )
    if major_minor > NEWEST_TESTED_TENSORFLOW:
        return (
            f"⚠ TensorFlow {runtime.tensorflow} is newer than the newest tested ({newest}): "
            "the checks run, but this version's checkpoint format has not been tested here"
        )
    return None
