"""nox sessions: each scenario runs in an environment installed from the committed uv.lock.

nox runs on the uv backend, so TensorFlow is downloaded once into uv's cache and linked
into each session's environment. Sessions use the interpreter nox runs on (3.10-3.13);
nothing downloads an interpreter. Arguments after `--` go to the script or to pytest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import nox
import tomllib

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
SCRIPTS = ROOT / "scripts" / "tests"
WORK = ROOT / ".work"  # git-ignored scratch for the scenarios' default folders


# The tool's own environments run the newest supported TensorFlow with Grain (strategy d);
# `tf-oldest` swaps in the oldest supported TensorFlow (Grain needs a protobuf it cannot
# share, so that environment has no strategy d). Both come from uv.lock.
NEWEST = ("--group=tf-newest", "--extra=grain")
OLDEST = ("--group=tf-oldest",)


def _install_locked(session: nox.Session, *groups: str, tf: tuple[str, ...] = NEWEST) -> None:
    """Install exactly what uv.lock pins (no resolution) into the session's environment."""
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--no-default-groups",
        *tf,
        # .pyc files written once here: with PYTHONDONTWRITEBYTECODE set (common in CI and
        # containers) every process would otherwise compile TensorFlow's ~1,800 modules
        # again, ~17 s of CPU per `import tensorflow` measured on this 2-core machine.
        "--compile-bytecode",
        *(f"--group={group}" for group in groups),
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location, "UV_PYTHON_DOWNLOADS": "never"},
    )


# One environment for every command a user runs (small-buffer, estimate, diagnose, ...):
# installed from uv.lock once, so the fourth command does not install TensorFlow a fourth
# time, and the estimate cache (keyed on TensorFlow's version, among others) serves them all.
RUN_ENV = ROOT / ".nox" / "run"


def _layered_python(session: nox.Session, interpreter: str) -> str:
    """The python of an environment layered on the user's `interpreter` (make … PYTHON=…).

    Built once per interpreter (and rebuilt when its packages change) by
    dlckpt/runtime/layer.py, run by that interpreter: it sees the interpreter's packages
    (their TensorFlow, TFDS, own code) and adds only the tool's other requirements.
    """
    found = shutil.which(interpreter)
    if found is None:
        session.error(f"PYTHON={interpreter}: no such interpreter (expected a python's path)")
        raise AssertionError  # session.error raises; this tells the type checker
    probe = subprocess.run(
        [found, "-c", "import sys, venv; print('.'.join(map(str, sys.version_info[:2])))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    version = probe.stdout.strip()
    numbers = tuple(int(part) for part in version.split(".") if part.isdigit())
    if probe.returncode != 0 or numbers < (3, 10):
        said = f", printed {version}" if version else ""
        session.error(
            f"PYTHON={interpreter}: not a Python 3.10+ interpreter with venv "
            f"(`{found} -c 'import sys, venv'` exited {probe.returncode}{said})"
        )
    # The path as given, not resolved: every venv's python links to one base interpreter.
    given = os.path.abspath(found)
    folder = ROOT / ".nox" / "layers" / hashlib.sha256(given.encode()).hexdigest()[:12]
    requirements = [
        requirement
        for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "dependencies"
        ]
        if not requirement.startswith("tensorflow")  # the user's own is the one tested
    ]
    layer = ROOT / "dlckpt" / "runtime" / "layer.py"
    session.run(
        found, str(layer), "--into", str(folder), "--project", str(ROOT), *requirements,
        external=True,
    )  # fmt: skip
    return str(folder / "bin" / "python")


def _run_python(session: nox.Session) -> str:
    """The python that runs a user's command: the shared run environment, synced from
    uv.lock (a no-op once it is), or a layer on the user's interpreter when `make … PYTHON=…`
    (DLCKPT_PYTHON) names one."""
    if os.environ.get("DLCKPT_PYTHON"):
        return _layered_python(session, os.environ["DLCKPT_PYTHON"])
    session.run_install(
        "uv", "sync", "--frozen", "--no-default-groups", "--compile-bytecode", *NEWEST,
        env={
            "UV_PROJECT_ENVIRONMENT": str(RUN_ENV), "VIRTUAL_ENV": str(RUN_ENV),
            "UV_PYTHON_DOWNLOADS": "never",
        },
    )  # fmt: skip
    return str(RUN_ENV / "bin" / "python")


def _run_script(session: nox.Session, script: str, env: dict[str, str] | None = None) -> None:
    python = _run_python(session)
    session.run(python, str(SCRIPTS / script), *session.posargs, env=env or {}, external=True)


def _run_top_script(session: nox.Session, script: str) -> None:
    """Like _run_script, for a script in scripts/ itself (it finds scripts/tests on its own)."""
    python = _run_python(session)
    session.run(python, str(ROOT / "scripts" / script), *session.posargs, external=True)


@nox.session
def small_buffer(session: nox.Session) -> None:
    """Small-buffer test: the size estimates, then a round trip with a 100-element buffer."""
    _run_script(session, "test_dataloader_checkpoint_small_buffer.py")


@nox.session(default=False)
def local_staging(session: nox.Session) -> None:
    """Local staging: save into LOCAL_STAGING_DIR (default .work/local-staging), then GCS if set."""
    staging = os.environ.get("LOCAL_STAGING_DIR")
    if not staging:  # the default lives in the git-ignored work folder
        staging = str(WORK / "local-staging")
        Path(staging).mkdir(parents=True, exist_ok=True)
    env = {"LOCAL_STAGING_DIR": staging}
    _run_script(session, "test_dataloader_checkpoint_local_staging.py", env=env)


@nox.session(default=False)
def original(session: nox.Session) -> None:
    """Original full-buffer test, saved under TensorFlow's temp folder (TMPDIR, or -- --tmpdir)."""
    env = {"TMPDIR": os.environ["TMPDIR"]} if os.environ.get("TMPDIR") else {}
    _run_script(session, "test_dataloader_checkpoint.py", env=env)


@nox.session(default=False)
def strategies(session: nox.Session) -> None:
    """Compare shuffle strategies: checkpoint size, speed, shuffle quality, exact resume."""
    _run_top_script(session, "compare_shuffle_strategies.py")


@nox.session
def estimate(session: nox.Session) -> None:
    """Measured checkpoint size, where its bytes go and the preflight, no round trip."""
    python = _run_python(session)
    script = SCRIPTS / "test_dataloader_checkpoint_small_buffer.py"
    session.run(python, str(script), "--estimate-only", *session.posargs, external=True)


@nox.session(default=False)
def multi_host(session: nox.Session) -> None:
    """Every process of a multi-host job: saved at once through gs://, restored, compared."""
    _run_top_script(session, "multi_host.py")


@nox.session(default=False)
def launch_ranks(session: nox.Session) -> None:
    """multi-host --launcher on this machine: ranks started as torchrun starts them."""
    _run_top_script(session, "launch_ranks.py")


@nox.session(default=False)
def diagnose(session: nox.Session) -> None:
    """Why a gs:// save failed on this host: every cause checked, the most likely named."""
    _run_top_script(session, "diagnose.py")


@nox.session
def disk_check(session: nox.Session) -> None:
    """Free space of every folder a checkpoint passes through, and RAM, vs what a test needs."""
    python = _run_python(session)  # --config-name runs the estimate in this environment
    script = str(SCRIPTS / "check_disk_space.sh")
    session.run("bash", script, *session.posargs, env={"PYTHON": python}, external=True)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks vs raw limits, scaling, estimator accuracy, catch rate -> bench/, docs/ (slow)."""
    _install_locked(session, "bench")
    session.run("python", str(ROOT / "scripts" / "bench.py"), *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (pytest; arguments after -- replace the defaults)."""
    _install_locked(session, "test")
    # Four workers on two cores: many tests wait on a child process or a server, and the
    # extra workers fill that time. Measured on this 2-core machine as
    # `yes >/dev/null & yes >/dev/null & make test ARGS="-q -n N ..."; kill %1 %2`, one run
    # each (this VM's speed varies ~1.5x between runs): 377 s of pytest with 3 workers and
    # 352 s with 4 (310 tests); earlier, without the hogs, 658 s with 2 and 585-602 s with
    # 3. Collecting the slow tests first was tried and was slower (515 s against 481 s, 346
    # tests): the heavy tests then all start together. loadgroup: tests marked xdist_group
    # share one worker, so a module's slow fixture is measured once, not once per worker.
    # No worker restarts: pytest-xdist 3.8's loadgroup can wait forever for work after it
    # replaces a crashed worker (pytest-xdist issues #1323, #1327, #1378); a crash should
    # end the run, naming the test it was running.
    # (The slowest steps are listed through pyproject's addopts, --durations=8.)
    defaults = ["-q", "--numprocesses=4", "--dist=loadgroup", "--max-worker-restart=0"]
    # The user-environment tests build TensorFlow environments: tf_versions runs them. The
    # estimator's accuracy against real saves at 20x-100x its calibration is about a third
    # of the suite's CPU (measured per test with getrusage, self + children: 230 of 928 s):
    # test_accuracy runs it, and CI runs both.
    selection = "not user_env and not accuracy"
    session.run("pytest", *(session.posargs or [*defaults, "-m", selection]))


@nox.session(default=False)
def test_accuracy(session: nox.Session) -> None:
    """The estimator held to real saves at 20x-100x its calibration (pytest -m accuracy)."""
    _install_locked(session, "test")
    defaults = ["-q", "--numprocesses=4", "--dist=loadgroup", "--max-worker-restart=0"]
    session.run("pytest", *(session.posargs or [*defaults, "-m", "accuracy"]))


# What must hold on every supported TensorFlow: the round trip and its verdicts, the risks
# found anywhere in the graph, the unsaveable pipelines' advice, the estimator's family, and
# TensorFlow's own gs:// writer against the embedded server; the strategies (the fix), whose
# set depends on the version; what MultiWorkerMirroredStrategy does with an iterator checkpoint.
CORE_TESTS = [
    "tests/unit",
    "tests/test_roundtrip.py",
    "tests/test_verdicts.py",
    "tests/test_graph_shuffles.py",
    "tests/test_advice.py",
    "tests/test_tf_gcs.py",
    "tests/test_small_buffer_script.py",
    "tests/test_strategies.py",
    "tests/test_multi_worker_strategy.py",
    "tests/test_estimate.py::test_estimate_within_3_percent_of_a_real_save_on_unseen_shapes",
    "tests/test_estimate.py::test_stated_uncertainty_covers_a_real_save_on_every_shape",
    "tests/test_estimate.py::test_buffers_the_main_line_does_not_show_are_counted",
]


@nox.session(default=False)
def tf_versions(session: nox.Session) -> None:
    """The core tests on the oldest supported TensorFlow (uv.lock's tf-oldest), then the tool
    in users' own environments on the oldest and the newest (pip install, PYTHON=, RLDS)."""
    _install_locked(session, "test", tf=OLDEST)
    defaults = ["-q", "--numprocesses=4", "--dist=loadgroup", "--max-worker-restart=0"]
    if session.posargs:
        session.run("pytest", *session.posargs)
        return
    session.run("pytest", *defaults, "-m", "not user_env", *CORE_TESTS)
    session.run("pytest", *defaults, "-m", "user_env", "tests/test_user_environment.py")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy and shellcheck."""
    _install_locked(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run(
        "mypy", "dlckpt", "scripts/tests", *map(str, (ROOT / "scripts").glob("*.py")), "noxfile.py"
    )
    shell_scripts = [*sorted(str(p) for p in SCRIPTS.glob("*.sh")), ".ci/run"]
    session.run("shellcheck", *shell_scripts)


@nox.session(default=False)
def lock(session: nox.Session) -> None:
    """Re-resolve uv.lock after a change to pyproject.toml."""
    session.run_install("uv", "lock", env={"UV_PYTHON_DOWNLOADS": "never"})
