"""Which TensorFlow the tool accepts, and the Runtime line every command prints first."""

from __future__ import annotations

import pytest

from dlckpt.errors import UsageError
from dlckpt.runtime import environment
from dlckpt.runtime.environment import Runtime, supported


def _runtime(tensorflow: str | None, layered_on: str | None = None) -> Runtime:
    return Runtime(
        python="/opt/conda/bin/python",
        python_version="3.11.7",
        environment="/opt/conda",
        layered_on=layered_on,
        tensorflow=tensorflow,
        tensorflow_distribution="tensorflow" if tensorflow else None,
    )


@pytest.mark.parametrize("version", ["2.15.0", "2.15.1", "2.18.0", "2.21.0", "2.21.0rc1"])
def test_the_tested_range_runs_without_a_note(version):
    assert supported(_runtime(version)) is None


@pytest.mark.parametrize("version", ["2.14.1", "2.9.0", "1.15.5"])
def test_an_older_tensorflow_is_refused_in_one_line_naming_it(version):
    with pytest.raises(UsageError) as refused:
        supported(_runtime(version))
    message = str(refused.value)
    assert "\n" not in message
    assert f"TensorFlow {version} at /opt/conda/bin/python is older than" in message
    assert "tensorflow>=2.15" in message


def test_no_tensorflow_is_refused_naming_the_interpreter():
    with pytest.raises(UsageError, match=r"TensorFlow is not installed for /opt/conda/bin/python"):
        supported(_runtime(None))


@pytest.mark.parametrize("version", ["2.22.0", "2.22.0rc0", "3.0.0"])
def test_a_newer_tensorflow_runs_with_a_note_not_a_refusal(version):
    note = supported(_runtime(version))
    assert note is not None and note.startswith(f"⚠ TensorFlow {version} is newer than")


def test_the_runtime_line_names_interpreter_tensorflow_and_environment():
    assert _runtime("2.15.1").line() == (
        "Runtime: Python 3.11.7 (/opt/conda/bin/python) · TensorFlow 2.15.1 · environment /opt/conda"
    )
    layered = _runtime("2.15.1", layered_on="/home/me/env/bin/python").line()
    assert layered.endswith("layered on /home/me/env/bin/python (its packages are used)")


def test_this_interpreter_is_described_from_its_own_metadata():
    import sys

    import tensorflow as tf

    here = environment.current()
    assert here.python == sys.executable and here.environment == sys.prefix
    assert here.tensorflow == tf.__version__
