"""The one place TensorFlow is imported, after its logging is quietened."""

from __future__ import annotations

import os
from types import ModuleType


def import_tensorflow() -> ModuleType:
    # The output a person reads should be ours, not TensorFlow's banner: level 3 hides
    # C++ INFO/WARNING lines; the oneDNN notice is printed regardless of that level.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf
