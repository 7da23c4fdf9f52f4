"""The one place TensorFlow is imported, after its logging is quietened (and Grain's absl lines)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from types import ModuleType


def import_tensorflow() -> ModuleType:
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    # The output a person reads should be ours, not TensorFlow's banner: level 3 hides
    # C++ INFO/WARNING lines, and the oneDNN notice has its own switch.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    # Loading the CUDA stubs logs "Could not find cuda drivers" through absl before any
    # level applies; that happens only during the import, so stderr is muted for it alone.
    # A failing import still raises its Python exception after stderr is restored.
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
    tf.get_logger().setLevel("ERROR")
    return tf


@contextlib.contextmanager
def quiet_absl() -> Iterator[None]:
    """Grain logs "Failed to load jax profiler" through absl on import; it needs no jax here."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
