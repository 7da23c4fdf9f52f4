"""The tool in a user's own environment: their TensorFlow (oldest and newest supported),
their TFDS, an RLDS dataset written with TFDS itself.

Each user environment is made here from uv.lock's groups (tf-oldest or tf-newest, plus rlds:
TensorFlow and tensorflow-datasets, nothing of this tool), as a training environment would
be. Then the two ways in: `pip install <checkout>` into it (the `dlckpt` console command),
and `make small-buffer PYTHON=<its python>` (a layer on it). Slow and needing the package
index (pip resolves the tool's own requirements): run by `make test-tf-versions` and CI,
not by `make test`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.user_env

VERSIONS = {"oldest": "2.15.", "newest": "2.21."}


def _run(*args: str | Path, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, timeout=timeout,
        **kwargs,
    )  # fmt: skip


def _user_environment(folder: Path, which: str) -> Path:
    """A virtual environment with exactly uv.lock's tf-<which> and rlds groups; its python."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is on PATH in the tool's environments (make puts .venv-tools first)"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(folder), "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    done = _run(
        uv, "sync", "--frozen", "--no-install-project", f"--only-group=tf-{which}",
        "--only-group=rlds", cwd=ROOT, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder / "bin" / "python"


def _versions(python: Path) -> dict[str, str]:
    done = _run(
        python, "-c",
        "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
        "('tensorflow', 'protobuf', 'numpy', 'tensorflow-datasets')}))",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _clean_env() -> dict[str, str]:
    """The shell a user has: none of the test run's own environment variables or paths."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "VIRTUAL_ENV"))}
    env.pop("PYTHONPATH", None)
    return env


def _rlds_run(command: list[str | Path], data_dir: Path, *extra: str, report: Path):
    return _run(
        *command, "--config-name", "rlds", f"dataloader.data_dir={data_dir}",
        "--report", report, *extra, env=_clean_env(), cwd=report.parent,
    )  # fmt: skip


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_pip_install_into_a_users_tensorflow_gives_a_command_that_tests_rlds(
    which, tmp_path_factory
):
    folder = tmp_path_factory.mktemp(f"user-{which}")
    python = _user_environment(folder / "env", which)
    before = _versions(python)
    assert before["tensorflow"].startswith(VERSIONS[which])

    assert _run(python, "-m", "ensurepip", "--default-pip").returncode == 0
    installed = _run(
        python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", ROOT,
        env=_clean_env(),
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    # The user's TensorFlow and what it depends on are left as they were.
    assert _versions(python) == before

    written = _run(python, "-m", "dlckpt.pipeline.rlds", folder / "rlds", env=_clean_env())
    assert written.returncode == 0, written.stderr
    data_dir = Path(written.stdout.strip().splitlines()[-1])
    assert sorted(p.name for p in data_dir.glob("*.tfrecord-*")) == [
        f"dlckpt_example_rlds-train.tfrecord-0000{i}-of-00004" for i in range(4)
    ]

    dlckpt = python.parent / "dlckpt"
    report = folder / "seeded.json"
    done = _rlds_run([dlckpt, "small-buffer"], data_dir, report=report)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        f"({python}) · TensorFlow {before['tensorflow']} · environment {python.parent.parent}"
        in (done.stdout.splitlines()[0])
    )
    assert "✓ ALL TESTS PASSED" in done.stdout
    answer = json.loads(report.read_text())
    assert answer["passed"] is True
    assert answer["runtime"]["tensorflow"] == before["tensorflow"]
    assert answer["runtime"]["python"] == str(python)

    if which == "oldest":  # TFDS's default: no ReadConfig seed, a new file order every pass
        report = folder / "unseeded.json"
        done = _rlds_run(
            [dlckpt, "small-buffer"], data_dir, "dataloader.shuffle_seed=null", report=report
        )
        assert done.returncode == 1, done.stdout + done.stderr
        last = [line for line in done.stdout.splitlines() if line.startswith("✗")][-1]
        assert last.startswith("✗ CANNOT VERIFY AN EXACT RESUME")
        assert "TFDS ReadConfig(shuffle_seed=N)" in last
        assert json.loads(report.read_text())["passed"] is False


def test_make_with_PYTHON_runs_in_a_layer_on_the_users_interpreter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user-make")
    python = _user_environment(folder / "env", "oldest")
    before = _versions(python)
    # The RLDS builder imports tensorflow_datasets, which only the user's environment has
    # (the tool's own refuses it: test_command.py). The dataset is written by the user's
    # python with the checkout on PYTHONPATH, as their own code would be.
    written = _run(
        python, "-m", "dlckpt.pipeline.rlds", folder / "rlds",
        env={**_clean_env(), "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    data_dir = written.stdout.strip().splitlines()[-1]
    report = folder / "report.json"
    make = shutil.which("make")
    assert make is not None
    done = _run(
        make, "-C", ROOT, "--no-print-directory", "small-buffer", f"PYTHON={python}",
        f"ARGS=--config-name rlds dataloader.data_dir={data_dir} --report {report}",
        env=_clean_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    runtime = next(line for line in done.stdout.splitlines() if line.startswith("Runtime: "))
    assert f"TensorFlow {before['tensorflow']} · environment {ROOT}/.nox/layers/" in runtime
    assert runtime.endswith(f"layered on {python} (its packages are used)")
    answer = json.loads(report.read_text())
    assert answer["passed"] is True and answer["runtime"]["layered_on"] == str(python)
    assert answer["runtime"]["tensorflow"] == before["tensorflow"]
    assert _versions(python) == before  # the user's environment itself is untouched


def test_make_with_a_PYTHON_without_tensorflow_is_one_line(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user-none")
    bare = folder / "bare"
    assert _run("python3", "-m", "venv", bare).returncode == 0
    make = shutil.which("make")
    assert make is not None
    done = _run(
        make, "-C", ROOT, "--no-print-directory", "small-buffer", f"PYTHON={bare}/bin/python",
        "ARGS=--config-name small", env=_clean_env(),
    )  # fmt: skip
    assert done.returncode != 0
    # nox prints a command's stderr with its stdout
    tool_lines = [line for line in done.stdout.splitlines() if line.startswith("✗")]
    assert tool_lines == [
        f"✗ TensorFlow is not installed for {bare}/bin/python (expected tensorflow>=2.15: run "
        "in your training environment, or `pip install 'tensorflow>=2.15'`)"
    ]
