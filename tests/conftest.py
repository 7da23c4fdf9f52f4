"""Shared fixtures: a real GCS server, script runners, tmpfs mounts.

The scripts' folders and tests/pipelines (a user's own module) are importable through
pyproject's `pythonpath`; the engine is the installed dlckpt package.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from dlckpt.storage.embedded.server import EmbeddedGcs

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = ROOT / "scripts" / "tests"
TESTS_DIR = Path(__file__).resolve().parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# `import tensorflow` imports Keras 3 eagerly, and Keras imports matplotlib.pyplot: ~1.5 s of
# CPU (of ~7.5 s) in each of the few hundred processes the suite starts. Nothing in the
# scripts or the tests uses Keras. Asking for legacy Keras, which is not installed, makes
# TensorFlow skip that import (its __init__ catches the ImportError); `tf.keras` alone stops
# working. Test processes only: a user's loader may use Keras.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# A script that crashes in native code (SIGSEGV, SIGABRT) prints every thread's Python stack.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")


def pytest_configure(config: pytest.Config) -> None:
    """A pytest-xdist worker killed by a signal, or ended by os._exit, dies without a word
    ("node down: Not properly terminated", blamed on whatever test it was running): print
    every thread's stack to the real stderr first, so the log shows where it came from. A
    test that installs its own handlers (the interrupt tests) replaces the SIGTERM / SIGHUP
    ones for the rest of its worker."""
    import faulthandler
    import signal

    # A suite started as a background job (`make test &`, nohup) has SIGINT ignored, and
    # the scripts it starts inherit that: a script keeps a signal its parent ignores, so the
    # Ctrl-C tests would wait for an exit that never comes. Python's own handler instead.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    stderr = os.dup(2)  # a copy: pytest captures fd 2 itself during each test
    for sig in (signal.SIGTERM, signal.SIGHUP):
        faulthandler.register(sig, file=stderr, all_threads=True, chain=True)
    faulthandler.enable(file=stderr, all_threads=True)  # SIGSEGV, SIGABRT, ... likewise
    real_exit = os._exit

    def exit_loudly(code: int) -> None:
        # Code under test that ends the test process itself (a watchdog's os._exit) would
        # otherwise also be only "node down".
        with contextlib.suppress(Exception):
            name = threading.current_thread().name
            os.write(stderr, f"os._exit({code}) called in a test process ({name}):\n".encode())
            faulthandler.dump_traceback(file=stderr, all_threads=True)
        real_exit(code)

    os._exit = exit_loudly  # type: ignore[assignment]
    # The in-process round trips fork their restore children from a warm process that has
    # imported TensorFlow once (runtime.warm): ~2 s of CPU saved per restore, the largest
    # share of the suite's CPU (a restore child used 2.2-3.1 s, most of it the import).
    # Scripts the suite starts as processes restore as a user's run does, in a new one.
    from dlckpt.runtime import warm

    warm.enable(os.environ.get("DLCKPT_TEST_WARM", "1") != "0")  # 0: plain, to compare


def pytest_unconfigure(config: pytest.Config) -> None:
    from dlckpt.runtime import warm

    warm.close_all()


@pytest.fixture(autouse=True)
def _no_watchdog_left_armed() -> Iterator[None]:
    """A test that leaves an interrupt's cleanup watchdog armed (runtime.signals) fails here, naming
    the signal and the line it landed on; the timer is cancelled, or it would end this
    worker with os._exit 90 s later, in whatever test then runs."""
    yield
    from dlckpt.runtime.signals import WATCHDOG_THREAD

    # A cancelled timer's thread may still be winding down: armed means not cancelled.
    armed = [
        t for t in threading.enumerate()
        if t.name.startswith(WATCHDOG_THREAD)
        and not (isinstance(t, threading.Timer) and t.finished.is_set())
    ]  # fmt: skip
    for timer in armed:
        if isinstance(timer, threading.Timer):
            timer.cancel()
    assert not armed, f"an interrupt's watchdog was left armed: {[t.name for t in armed]}"


@pytest.fixture(scope="session", autouse=True)
def _shared_matplotlib_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One matplotlib cache for every process the tests start. TensorFlow imports Keras,
    which imports matplotlib.pyplot; with no cache (a test's own XDG_CACHE_HOME) it scans the
    system's fonts first: ~0.5 s more per process, and the suite starts a few hundred."""
    os.environ["MPLCONFIGDIR"] = str(tmp_path_factory.mktemp("matplotlib"))


@pytest.fixture(scope="session", autouse=True)
def _run_estimate_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One estimate cache (XDG_CACHE_HOME) for the whole run, every worker and every process
    it starts: a config's calibration is measured at most once per worker (entries are
    written atomically), never read from an earlier run, and never written into the home
    folder of whoever runs the tests. A test that needs its own cache sets its own."""
    folder = str(_shared_folder(tmp_path_factory) / "run-estimate-cache")
    os.environ["XDG_CACHE_HOME"] = folder
    return folder


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedGcs]:
    """The embedded GCS server (fake-gcs-server behind its HTTPS front) for the whole session.

    Its variables are not applied to the test process: each test passes `gcs_server.env`
    to what it starts.
    """
    from dlckpt.storage.embedded.server import embedded_gcs

    with embedded_gcs(tmp_path_factory.mktemp("gcs-server")) as server:
        yield server


@pytest.fixture(scope="session")
def gcs_endpoint(gcs_server: EmbeddedGcs) -> str:
    """The embedded server's endpoint, for STORAGE_EMULATOR_HOST."""
    return gcs_server.endpoint


@pytest.fixture
def gcs_client(gcs_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """A google-cloud-storage client talking to the loopback server."""
    from dlckpt.storage.gcs import make_client

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    return make_client()


@pytest.fixture
def gcs_bucket(gcs_client, request: pytest.FixtureRequest):
    """A fresh bucket per test (the tests, not the scripts, create it)."""
    import re

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + "-bkt"
    bucket = gcs_client.bucket(name)
    if not bucket.exists():
        bucket = gcs_client.create_bucket(name)
    return bucket


def script_env(**extra: str) -> dict[str, str]:
    """The environment a script runs with: ours, with tests/pipelines importable."""
    from dlckpt.storage.embedded.server import VARIABLES

    env = dict(os.environ)
    for name in ("GCS_TEST_BUCKET", *VARIABLES):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR / "pipelines"), env.get("PYTHONPATH", "")]
    ).strip(os.pathsep)
    env.update(extra)
    return env


def run_script(
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run a script under scripts/ as a person would, capturing its output."""
    path = ROOT / "scripts" / script if "/" in script else SCRIPTS_DIR / script
    return subprocess.run(
        [sys.executable, str(path), *args],
        env=env if env is not None else script_env(),
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_in_process(
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a script's main(argv) in this process, as run_script runs it in a new one.

    Same arguments and result: the exit code main returns, what it printed to stdout and
    stderr. The environment is `env` (default script_env()) for the call, then restored;
    the entries of its PYTHONPATH (a user's pipeline module) are importable for the call,
    and modules imported from them are forgotten after it, as a new process would. What
    only a process can show (a signal, TensorFlow's gs:// filesystem, which reads its
    settings once per process, stray output on fd 2) still needs run_script; the restore
    still runs in a new process either way. Saves a TensorFlow import (~3.5 s of CPU).
    """
    import importlib
    import io
    import tempfile

    module = importlib.import_module(Path(script).stem)  # scripts/, scripts/tests: pythonpath
    environment = env if env is not None else script_env()
    extra = [
        entry for entry in environment.get("PYTHONPATH", "").split(os.pathsep)
        if entry and entry not in sys.path
    ]  # fmt: skip
    saved_env, saved_cwd, saved_modules = dict(os.environ), os.getcwd(), set(sys.modules)
    saved_seed = _tensorflow_global_seed()
    autograph_before = _autograph_files(environment)
    out, err = io.StringIO(), io.StringIO()
    # The one sys.path edit in the suite: what PYTHONPATH gives the script's own process.
    sys.path[:0] = extra
    try:
        os.environ.clear()
        os.environ.update(environment)
        os.chdir(cwd or ROOT)
        tempfile.tempdir = None  # found again from this environment's TMPDIR, as a process would
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = module.main(list(args))
            except SystemExit as exit_:  # argparse's --help
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        tempfile.tempdir = None
        del sys.path[: len(extra)]
        # A pipeline that calls tf.random.set_seed (tests/cases/c02) would otherwise seed
        # every unseeded shuffle the worker's later tests build, hiding their risks.
        _restore_tensorflow_global_seed(saved_seed)
        # TensorFlow's autograph removes the files it wrote at its process's exit (atexit):
        # this call's process is the test's, which exits only later, so they go now, as the
        # script's own process would remove them. Whether a call writes any depends on which
        # functions this worker converted before (CI saw one test fail on that).
        for leftover in _autograph_files(environment) - autograph_before:
            leftover.unlink(missing_ok=True)
        for name in set(sys.modules) - saved_modules:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if any(origin.startswith(entry) for entry in extra):
                del sys.modules[name]
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


def _autograph_files(environment: dict[str, str]) -> set[Path]:
    """TensorFlow autograph's generated files in the temp folder `environment` gives."""
    folder = environment.get("TMPDIR")
    return set(Path(folder).glob("__autograph_generated_file*.py")) if folder else set()


def _tensorflow_global_seed() -> int | None:
    """TensorFlow's global random seed in this process (None: unset, or not imported)."""
    if "tensorflow" not in sys.modules:
        return None
    from tensorflow.python.eager import context

    return context.global_seed()


def _restore_tensorflow_global_seed(seed: int | None) -> None:
    if "tensorflow" in sys.modules and _tensorflow_global_seed() != seed:
        import tensorflow as tf

        tf.random.set_seed(seed)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 20 MB filesystem (tmpfs), unmounted afterwards; skips where mounting is not allowed."""
    with tmpfs_mount(tmp_path / "small-disk", "size=20m") as mount_point:
        yield mount_point


# A cheap calibration of the `small` config (two buffers, one offset): still measured.
SMALL_CHEAP = [
    "estimate.calibration_buffer_sizes=[8,32]",
    "estimate.calibration_offsets=[0]",
]


def _shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's own base temp folder, which every pytest-xdist worker shares (each worker's
    base temp folder is inside it); without xdist, the base temp folder itself."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _measured_once(shared: Path, name: str, overrides: list[str], cache: Path):
    """The `small` config's estimate under `overrides`, measured once per run into `cache`
    (an XDG_CACHE_HOME): the first pytest-xdist worker to ask measures it while the others
    wait on a file lock, then each reads the measuring run's result (pickled)."""
    import fcntl
    import pickle

    from dlckpt.config import load_config
    from dlckpt.estimate.estimator import estimate

    saved = shared / f"{name}.pickle"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not saved.exists():
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("XDG_CACHE_HOME", str(cache))
                result = estimate(load_config("small", overrides), say=lambda _: None)
            assert result.calibration is not None and not result.cached
            saved.write_bytes(pickle.dumps(result))
    return pickle.loads(saved.read_bytes())


@pytest.fixture(scope="session")
def small_estimate_cache(tmp_path_factory: pytest.TempPathFactory):
    """(XDG_CACHE_HOME holding the `small` config's estimate under SMALL_CHEAP, the estimate),
    measured once per run (~15 s of CPU). Runs with these overrides and that cache reuse it."""
    shared = _shared_folder(tmp_path_factory)
    cache = shared / "small-estimate-cache"
    return cache, _measured_once(shared, "small-estimate", SMALL_CHEAP, cache)


@pytest.fixture(scope="session")
def small_default_estimate(tmp_path_factory: pytest.TempPathFactory, _run_estimate_cache: str):
    """The `small` config's estimate under its own settings (~30 s of CPU), measured once per
    run into the run's estimate cache: script runs of `--config-name small` that ask for it
    find it there instead of each worker measuring it at once."""
    shared = _shared_folder(tmp_path_factory)
    return _measured_once(shared, "small-default-estimate", [], Path(_run_estimate_cache))


@pytest.fixture
def small_estimate_copy(small_estimate_cache, tmp_path: Path) -> Path:
    """tmp_path/"cache": this test's own copy of the session's estimate cache (safe to drop or
    add entries in), for XDG_CACHE_HOME."""
    import shutil

    return Path(shutil.copytree(small_estimate_cache[0], tmp_path / "cache", dirs_exist_ok=True))


@pytest.fixture(scope="session")
def script_estimate_cache(_run_estimate_cache: str) -> str:
    """The run's estimate cache (XDG_CACHE_HOME), for script runs given an environment of
    their own: runs with the same config and overrides share one calibration."""
    return _run_estimate_cache


@contextlib.contextmanager
def tmpfs_mount(folder: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted on `folder` with `options` (e.g. "size=4m,nr_inodes=16"),
    unmounted afterwards; skips the test where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def round_trip_in_process(dataloader: dict, tmp_path: Path, lines: list[str]):
    """The round trip on `dataloader` (its `_target_` and arguments) under the default
    settings, into `tmp_path`, its printed lines collected in `lines` (the restore still
    runs in a new process)."""
    from omegaconf import OmegaConf

    from dlckpt.config import Settings
    from dlckpt.roundtrip.scenario import run_round_trip

    cfg = OmegaConf.merge(OmegaConf.structured(Settings), {"dataloader": dataloader})
    return run_round_trip(
        cfg, scratch_root=tmp_path, destination=None, run_prefix="dlckpt-verdict",
        keep=False, say=lines.append,
    )  # fmt: skip
