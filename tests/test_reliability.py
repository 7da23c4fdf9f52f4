"""Reliability under signals, storage outages, full disks and bad settings (issue 11).

Real parts only: real signals sent to real processes (alone and as a process group),
a real GCS server process killed (SIGKILL) or frozen (SIGSTOP) mid-transfer, real tmpfs
mounts. Each case asserts the exit code, the one line (no traceback), a generous bound on
the time to exit, that nothing the run wrote is left (scratch, run prefix, child PIDs)
and that the user's own files and objects are untouched.

The counts in README.md's Reliability section are these tests: every `bad_input` case is a
bad input tried, every `fault` case a fault tried (see the section for the command).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import SCRIPTS_DIR, run_in_process, run_script, script_env, tmpfs_mount

EXIT_BOUND_SECONDS = 60  # generous: a bound that catches a hang, not a speed target
SMALL_BUFFER = "test_dataloader_checkpoint_small_buffer.py"


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def _gone(pids: list[int], within: float = 30) -> list[int]:
    """The PIDs of `pids` still alive (zombies count as gone) after waiting up to `within` s."""
    deadline = time.monotonic() + within
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.1)
    return alive


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- signals: the mechanism, in a small script that uses run_main ----------------------

PROBE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dlckpt.cli.common import common_parser, parse_args, run_main

    parser = common_parser("probe", "a run that holds a folder until it is interrupted")

    def body():
        args = parse_args(parser, None)
        scratch = Path(args.overrides[0])
        scratch.mkdir()
        try:
            print("ready", flush=True)
            time.sleep(120)
        finally:
            time.sleep(1.0)  # a slow cleanup: a second signal must not cut it short
            scratch.rmdir()
        return 0

    sys.exit(run_main(body))
    """
)


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    path = tmp_path / "probe.py"
    path.write_text(PROBE)
    return path


@pytest.mark.parametrize(
    ("sig", "code", "group"),
    [
        (signal.SIGINT, 130, False),
        (signal.SIGTERM, 143, False),
        (signal.SIGHUP, 129, False),
        (signal.SIGINT, 130, True),
        (signal.SIGTERM, 143, True),
        (signal.SIGHUP, 129, True),
    ],
    ids=["fault-INT", "fault-TERM", "fault-HUP", "fault-INT-group", "fault-TERM-group",
         "fault-HUP-group"],
)  # fmt: skip
def test_termination_signals_clean_up_and_exit_128_plus_n(probe, tmp_path, sig, code, group):
    scratch, report = tmp_path / "scratch", tmp_path / "r.json"
    report.write_text('{"passed": true, "exit_code": 0}')  # a previous run's report
    process = subprocess.Popen(
        [sys.executable, str(probe), "--report", str(report), str(scratch)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    assert scratch.is_dir() and not report.exists()  # the stale report is gone at start
    started = time.monotonic()
    send = (lambda s: os.killpg(process.pid, s)) if group else process.send_signal
    send(sig)
    time.sleep(0.3)
    send(sig)  # a second signal (an impatient user) lands inside the cleanup
    _, stderr = process.communicate(timeout=EXIT_BOUND_SECONDS)
    assert time.monotonic() - started < EXIT_BOUND_SECONDS
    assert process.returncode == code, stderr
    name = signal.Signals(sig).name
    assert _one_line(stderr) == f"✗ interrupted by {name}; the run's own files were removed"
    assert not scratch.exists()
    data = json.loads(report.read_text())
    assert data["exit_code"] == code and data["passed"] is False
    assert data["error"].startswith(f"interrupted by {name}")


LAUNCHER = textwrap.dedent(
    """
    import subprocess, sys, time
    from dlckpt.runtime.signals import die_with_parent

    wrap = die_with_parent if sys.argv[1] == "wrapped" else list
    child = subprocess.Popen(wrap([sys.executable, "-c", "import time; time.sleep(300)"]))
    print(child.pid, flush=True)
    time.sleep(300)
    """
)


@pytest.mark.parametrize("wrapped", [True, False], ids=["fault-KILL-parent", "control"])
def test_a_child_dies_with_its_parent_even_on_sigkill(tmp_path, wrapped):
    """The control (no wrapper) shows the child would outlive a SIGKILLed parent."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    parent = subprocess.Popen(
        [sys.executable, str(launcher), "wrapped" if wrapped else "bare"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.kill()
        parent.wait(timeout=EXIT_BOUND_SECONDS)
        survivors = _gone([child], within=10 if wrapped else 2)
        assert survivors == ([] if wrapped else [child])
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(child).kill()


HELD = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time, traceback
    import tensorflow as tf
    from dlckpt.runtime.signals import Interrupted, interrupts_raise

    @tf.function
    def spin(n):  # one TensorFlow call that takes a while
        return tf.while_loop(lambda i, x: i < n, lambda i, x: (i + 1, x * 1.0000001 + 1.0),
                             (tf.constant(0), tf.constant(0.0)))[1]

    spin(tf.constant(10))  # traced outside the timed call
    n = 1000
    while True:  # a call of >= 1.5 s, whatever the machine's speed
        started = time.monotonic()
        spin(tf.constant(n))
        if time.monotonic() - started >= 0.3:
            n *= 5
            break
        n *= 4
    events = []
    try:
        with interrupts_raise():
            threading.Timer(0.3, os.kill, (os.getpid(), signal.{sig})).start()
            spin(tf.constant(n))
            events.append("tensorflow returned")
            time.sleep(30)
            events.append("not interrupted")
    except Interrupted as interrupt:
        frames = traceback.extract_tb(interrupt.__traceback__)
        where = [f.filename for f in frames if not f.filename.endswith("runtime/signals.py")][-1]
        events.append(f"raised in {{os.path.basename(where)}}: {{interrupt.exit_code}}")
    print(json.dumps(events), flush=True)
    """
)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_fault_signal_inside_a_tensorflow_call_is_raised_once_it_returns(tmp_path, sig):
    """Raising inside TensorFlow's code crashed the saving process (CI: a segfault in
    SaveV2's argument conversion, a heap corruption abort): the signal is held until the
    call returns, then raised in the caller's code."""
    script = tmp_path / "held.py"
    script.write_text(HELD.format(sig=sig))
    result = subprocess.run(
        [sys.executable, str(script)], env=script_env(), capture_output=True, text=True,
        timeout=EXIT_BOUND_SECONDS * 2, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    code = {"SIGTERM": 143, "SIGINT": 130}[sig]
    assert json.loads(result.stdout) == ["tensorflow returned", f"raised in held.py: {code}"]


# --- settings: every numeric setting validated where the config is read -----------------

BAD_SETTINGS = [
    ("roundtrip.batches_to_compare=0", "roundtrip.batches_to_compare=0: expected an integer >= 1"),
    ("roundtrip.batches_to_compare=-2", "roundtrip.batches_to_compare=-2: expected an integer >= 1"),
    ("roundtrip.batches_before_save=-1", "roundtrip.batches_before_save=-1: expected an integer >= 0"),
    ("roundtrip.small_buffer_size=0", "roundtrip.small_buffer_size=0: expected an integer >= 1"),
    ("estimate.formula_overhead=-1", "estimate.formula_overhead=-1.0: expected a number above 0"),
    ("estimate.formula_overhead=0", "estimate.formula_overhead=0.0: expected a number above 0"),
    ("estimate.formula_overhead=nan", "estimate.formula_overhead=nan: expected a number above 0"),
    ("estimate.bytes_per_sample=0", "estimate.bytes_per_sample=0: expected an integer >= 1"),
    ("dataloader.batch_size=0", "dataloader.batch_size=0: expected an integer >= 1"),
    ("dataloader.batch_size=-4", "dataloader.batch_size=-4: expected an integer >= 1"),
    ("dataloader.image_size=0", "dataloader.image_size=0: expected an integer >= 1"),
    ("dataloader.window_size=0", "dataloader.window_size=0: expected an integer >= 1"),
    ("+dataloader.jpeg_quality=101", "dataloader.jpeg_quality=101: expected an integer from 1 to 100"),
    ("dataloader.num_episodes=0", "dataloader.num_episodes=0: expected an integer >= 1"),
    ("dataloader.wrist_image_size=-1", "dataloader.wrist_image_size=-1: expected an integer >= 0"),
    ("dataloader.batch_size=true", "dataloader.batch_size=True: expected an integer >= 1"),
]  # fmt: skip


@pytest.mark.parametrize(("override", "expected"), BAD_SETTINGS, ids=[o for o, _ in BAD_SETTINGS])
def test_bad_input_setting_is_one_line(override, expected):
    from dlckpt.config import load_config
    from dlckpt.errors import UsageError

    with pytest.raises(UsageError) as caught:
        load_config("small", [override])
    assert str(caught.value).startswith(expected), caught.value
    assert "\n" not in str(caught.value)


def test_good_settings_still_load():
    from dlckpt.config import load_config

    cfg = load_config(
        "openvla",
        ["roundtrip.batches_before_save=0", "roundtrip.batches_to_compare=1",
         "estimate.formula_overhead=0.5", "+dataloader.num_parallel_calls=-1",
         "+dataloader.prefetch_batches=0"],
    )  # fmt: skip
    assert cfg.roundtrip.batches_before_save == 0 and cfg.dataloader.num_parallel_calls == -1


def test_bad_input_empty_comparison_never_passes(tmp_path):
    """batches_to_compare=0 used to print ✓ ALL TESTS PASSED; now exit 2 before any work."""
    report = tmp_path / "r.json"
    result = run_script(
        SMALL_BUFFER, "--config-name", "small", "--report", str(report),
        "roundtrip.batches_to_compare=0", env=script_env(GCS_TEST_BUCKET=str(tmp_path)),
        timeout=EXIT_BOUND_SECONDS,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "roundtrip.batches_to_compare=0" in _one_line(result.stderr)
    assert "PASSED" not in result.stdout
    data = json.loads(report.read_text())  # written on exit 2 as well
    assert (data["exit_code"], data["passed"]) == (2, False)
    assert data["error"].startswith("roundtrip.batches_to_compare=0")


@pytest.mark.parametrize(
    ("exception", "message"),
    [("ValueError", "batch_size must be positive"), ("KeyError", "'camera'"),
     ("RuntimeError", "no shards under /data/rlds"),
     # the builder's own TypeError (a map's int32 % int64), not a settings mismatch
     ("TypeError", "Input 'y' of 'FloorMod' Op has type int64")],
    ids=["ValueError", "KeyError", "RuntimeError", "TypeError"],
)  # fmt: skip
def test_bad_input_builder_that_raises_is_one_line_with_its_type(
    tmp_path, monkeypatch, exception, message
):
    from omegaconf import OmegaConf

    from dlckpt.errors import UsageError
    from dlckpt.pipeline.build import instantiate_dataset

    name = f"raising_{exception.lower()}"  # one module per case: imports are cached
    raised = message.strip("'")
    (tmp_path / f"{name}.py").write_text(
        f"def build(*, shuffle_buffer_size):\n    raise {exception}({raised!r})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = OmegaConf.create({"_target_": f"{name}.build", "shuffle_buffer_size": 8})
    with pytest.raises(UsageError) as caught:
        instantiate_dataset(cfg)
    assert str(caught.value).startswith(
        f"dataloader: {name}.build raised {exception} while building the dataset: {message}"
    )


@pytest.mark.parametrize(
    ("elements", "held"),
    [("tf.data.Dataset.range(40).window(4)", "DatasetSpec"),
     ("tf.data.Dataset.range(40).map(lambda i: tf.experimental.Optional.from_value(i))",
      "OptionalSpec")],
    ids=["window", "optional"],
)  # fmt: skip
def test_bad_input_elements_that_are_not_tensors_are_named(tmp_path, monkeypatch, elements, held):
    """A window() left unflattened yields datasets; TensorFlow saves such an iterator, but no
    batch of it can be read as values: one line, before anything runs (was exit 4)."""
    from omegaconf import OmegaConf

    from dlckpt.errors import UsageError
    from dlckpt.pipeline.build import instantiate_dataset

    name = f"yielding_{held.lower()}"
    (tmp_path / f"{name}.py").write_text(
        f"import tensorflow as tf\ndef build(*, shuffle_buffer_size):\n    return {elements}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = OmegaConf.create({"_target_": f"{name}.build", "shuffle_buffer_size": 8})
    with pytest.raises(UsageError, match=f"yields elements holding a {held}; the test compares"):
        instantiate_dataset(cfg)


# A map that fails at element 60 of a stream read 4 at a time, with no shuffle buffer (the
# estimate reads a few batches): past the 3 batches before the save, inside the window.
FAILS_AT_60 = (
    "import tensorflow as tf\n"
    "def build(*, shuffle_buffer_size, path):\n"
    "    size = lambda i: tf.where(i == 60, tf.constant(3, tf.int64), tf.constant(4, tf.int64))\n"
    "    return tf.data.Dataset.range(10**5).map(lambda i: tf.reshape(tf.range(size(i)), [2, 2])).batch(4)\n"
)
# A value that fails to parse at element 150 of the shuffle's input: inside the estimate's
# sample, where TensorFlow's Dataset.save waited forever on it (a 300 s stall message).
FAILS_AT_150 = (
    "import tensorflow as tf\n"
    "def build(*, shuffle_buffer_size, path):\n"
    "    text = lambda i: tf.where(i == 150, tf.constant('oops'), tf.constant('1'))\n"
    "    rows = tf.data.Dataset.range(10**5).map(lambda i: tf.strings.to_number(text(i)))\n"
    "    return rows.shuffle(shuffle_buffer_size, seed=1).batch(2)\n"
)
TRUNCATED = (
    "import tensorflow as tf\n"
    "def build(*, shuffle_buffer_size, path):\n"
    "    rows = tf.data.TFRecordDataset(path).repeat()\n"
    "    return rows.shuffle(shuffle_buffer_size, seed=1).batch(2)\n"
)


@pytest.mark.parametrize(
    ("builder", "buffer", "said"),
    [(TRUNCATED, 100, "DataLossError while reading its elements: truncated record at "),
     (FAILS_AT_60, 100, "InvalidArgumentError while reading its elements: Input to reshape is a tensor with 3 values"),
     (FAILS_AT_150, 2000, "InvalidArgumentError while reading its elements: StringToNumberOp could not correctly convert string: oops")],
    ids=["truncated-before-the-save", "map-fails-after-the-save", "fails-inside-the-estimates-sample"],
)  # fmt: skip
def test_bad_input_a_pipeline_that_fails_as_it_is_read_is_exit_2_naming_the_error(
    tmp_path, builder, buffer, said
):
    """A truncated TFRecord file: TensorFlow's DataLossError at the element that reaches
    it. The pipeline fails, not the checkpoint: exit 2, one line with TensorFlow's own words
    (without its wrappers), and the report written (was exit 4, "the run stopped"). The
    same past the save, where a new iterator that saves nothing fails alike (was exit 1,
    "THE RUNNING PIPELINE FAILED AFTER THE SAVE" with a hint about snapshots)."""
    import tensorflow as tf

    records = tmp_path / "records.tfrecord"
    with tf.io.TFRecordWriter(str(records)) as writer:
        for index in range(50):
            writer.write(b"x" * 100 + bytes([index]))
    records.write_bytes(records.read_bytes()[:-60])  # cut inside the last record
    (tmp_path / "failing_reads.py").write_text(builder)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "failing.yaml").write_text(
        "dataloader:\n  _target_: failing_reads.build\n"
        f"  shuffle_buffer_size: {buffer}\n  path: {records}\n"
    )
    report = tmp_path / "r.json"
    env = script_env(PYTHONPATH=str(tmp_path))
    args = ["--config-dir", str(tmp_path / "conf"), "--config-name", "failing"]
    # A stall (the sample's error, before) ends at this limit with its own message.
    args += ["estimate.calibration_timeout_seconds=60"]
    result = run_in_process(SMALL_BUFFER, *args, "--report", str(report), env=env)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("✗")]
    assert line.startswith(f"✗ dataloader: the pipeline raised {said}"), line
    assert "function_node" not in line and "[Op:" not in line
    assert json.loads(report.read_text())["exit_code"] == 2
    if builder == FAILS_AT_60:  # read past the save: what the run promises to do
        assert "✓ Saved the iterator after 3 batches" in result.stdout, result.stdout


# --- --report: writable up front, written on every exit --------------------------------


def _read_only_mount(folder: Path) -> contextlib.AbstractContextManager[Path]:
    return tmpfs_mount(folder, "ro,size=1m")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("/dev/full", "is not a regular file"),
        ("/proc/dlckpt-report.json", "cannot write there"),
        ("{read_only}/r.json", "cannot write there (Read-only file system)"),
        ("{tmp}", "is a folder"),
        ("{tmp}/absent/r.json", "its folder does not exist"),
    ],
    ids=["dev-full", "proc", "read-only-mount", "folder", "missing-folder"],
)
def test_bad_input_report_path_refused_up_front(tmp_path, where, expected):
    from dlckpt.errors import UsageError
    from dlckpt.report import check_report_path

    with _read_only_mount(tmp_path / "ro") as read_only:
        path = Path(where.format(tmp=tmp_path, read_only=read_only))
        with pytest.raises(UsageError) as caught:
            check_report_path(path)
    assert str(caught.value).startswith(f"--report {path}: {expected}")


def test_bad_input_unwritable_report_stops_the_script_before_it_runs(tmp_path):
    result = run_script(
        SMALL_BUFFER, "--config-name", "small", "--report", "/dev/full",
        env=script_env(GCS_TEST_BUCKET=str(tmp_path)), timeout=EXIT_BOUND_SECONDS,
    )  # fmt: skip
    assert result.returncode == 2
    assert _one_line(result.stderr).startswith("✗ --report /dev/full: is not a regular file")
    assert result.stdout == ""


def test_an_unexpected_error_still_writes_the_report(tmp_path):
    from dlckpt import report as _report
    from dlckpt.cli.common import run_main

    report = tmp_path / "r.json"

    def body() -> int:
        _report.start_report(report, script="probe")
        raise RuntimeError("a bug")

    assert run_main(body, argv=[], report={"config_name": "small"}) == 4
    data = json.loads(report.read_text())
    assert (data["script"], data["config_name"]) == ("probe", "small")
    assert (data["passed"], data["exit_code"]) == (False, 4)
    assert data["error"].startswith("ERROR: the run stopped before a verdict: RuntimeError: a bug")


# --- messages that used to mislead -------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("folder", "is a folder"),
        ("not json {", "is not JSON"),
        ('{"client_email": "x"}', 'has no "type" field'),
        ('{"type": "service_account"}', "not usable credentials"),
    ],
    ids=["missing", "folder", "not-json", "no-type", "incomplete-key"],
)
def test_bad_input_credentials_file_names_the_variable(tmp_path, monkeypatch, content, expected):
    from dlckpt.errors import UsageError
    from dlckpt.storage.gcs import make_client

    key = tmp_path / "key.json"
    if content == "folder":
        key.mkdir()
    elif content is not None:
        key.write_text(content)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    with pytest.raises(UsageError) as caught:
        make_client()
    assert str(caught.value).startswith(f"GOOGLE_APPLICATION_CREDENTIALS={key}: {expected}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,5GB", "commas are ambiguous"),
        ("1,500GB", "commas are ambiguous"),
        ("15 XB", "expected a size such as"),
        ("0GB", "expected a size above zero"),
        ("-3GB", "expected a size such as"),
    ],
)
def test_bad_input_fit_budget(text, expected):
    from dlckpt.errors import UsageError
    from dlckpt.units import parse_size

    with pytest.raises(UsageError, match=expected):
        parse_size(text)


def test_huge_sizes_are_exact():
    from dlckpt.units import parse_size

    assert parse_size("99999999999999999999TB") == 99999999999999999999 * 10**12
    assert parse_size("1.000000001GB") == 1_000_000_001


def test_bad_input_fit_budget_with_a_comma_exits_2(tmp_path):
    result = run_script(
        SMALL_BUFFER, "--config-name", "small", "--estimate-only", "--fit-budget", "1,5GB",
        timeout=EXIT_BOUND_SECONDS,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--fit-budget '1,5GB': commas are ambiguous" in _one_line(result.stderr)


def test_bad_input_a_file_as_the_destination_is_called_a_file(tmp_path):
    from dlckpt.errors import UsageError
    from dlckpt.storage.local import LocalDestination

    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        LocalDestination.from_setting(str(tmp_path / "a-file"))
    assert (tmp_path / "a-file").read_text() == "mine"


# --- storage outages: a real GCS server killed or frozen mid-transfer --------------------

RUN = "run-1"


@contextlib.contextmanager
def _own_server() -> Iterator[tuple[object, list[psutil.Process]]]:
    """A GCS server process of this test's own (the session's stays healthy), and a client."""
    from dlckpt.storage.gcs import embedded_gcs_server, make_client

    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    with embedded_gcs_server() as _endpoint:
        servers = [child for child in me.children(recursive=True) if child.pid not in before]
        assert servers, "the server process was not found"
        try:
            yield make_client(), servers
        finally:
            for server in servers:  # thaw a frozen one, so it can stop
                with contextlib.suppress(psutil.NoSuchProcess):
                    server.resume()


class _FaultAt(io.RawIOBase):
    """A file that calls `fault()` once, when the upload first reads past `at` bytes."""

    def __init__(self, path: Path, at: int, fault: Callable[[], None]) -> None:
        self._handle = path.open("rb")
        self._at, self._fault, self._fired = at, fault, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if not self._fired and self._handle.tell() >= self._at:
            self._fired = True
            self._fault()
        data = self._handle.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def close(self) -> None:
        self._handle.close()
        super().close()


@pytest.fixture
def staged_files(tmp_path: Path) -> list[Path]:
    """A checkpoint's files: a small index and a shard that goes up in two chunks."""
    from dlckpt.storage.gcs import RESUMABLE_CHUNK_BYTES

    folder = tmp_path / "staged"
    folder.mkdir()
    (folder / "iterator.index").write_bytes(os.urandom(2_000))
    (folder / "iterator.data-00000-of-00001").write_bytes(
        os.urandom(RESUMABLE_CHUNK_BYTES + 2 * 1024 * 1024)
    )
    return sorted(folder.iterdir())


def _faulty_destination(client, servers, files, fault_name):  # type: ignore[no-untyped-def]
    """A destination with short transfer bounds, and an opener that breaks the server."""
    from dlckpt.storage.gcs import RESUMABLE_CHUNK_BYTES, GcsDestination, GcsLocation

    client.create_bucket("fault-bkt")
    client.bucket("fault-bkt").blob("user/keep.txt").upload_from_string(b"the user's object")
    destination = GcsDestination(
        client, GcsLocation("fault-bkt", "p"), request_timeout=4, retry_deadline=8
    )

    fired: list[bool] = []

    def fault() -> None:
        # Once per test, however often the upload reopens the shard (a retry makes a new
        # reader): a second SIGTERM after the interrupt test's handler is gone would kill the
        # pytest worker itself.
        if fired:
            return
        fired.append(True)
        for server in servers:
            if fault_name == "kill":
                server.kill()
                server.wait(10)
            elif fault_name == "freeze":
                server.suspend()
            else:  # freeze, then the run is told to stop, as `timeout` does
                server.suspend()
                os.kill(os.getpid(), signal.SIGTERM)

    shard = next(path for path in files if path.name.startswith("iterator.data"))

    def opener(path: Path):  # type: ignore[no-untyped-def]
        if path == shard:
            return io.BufferedReader(_FaultAt(path, RESUMABLE_CHUNK_BYTES, fault))
        return path.open("rb")

    return destination, opener


@pytest.mark.parametrize("fault", ["kill", "freeze"], ids=["fault-killed", "fault-frozen"])
def test_fault_server_lost_mid_upload_reports_the_first_error_and_what_is_left(staged_files, fault):
    from dlckpt.storage.transfer import MARKER_NAME, TransferError

    with _own_server() as (client, servers):
        destination, opener = _faulty_destination(client, servers, staged_files, fault)
        started = time.monotonic()
        with pytest.raises(TransferError) as caught:
            destination.put(staged_files, RUN, opener=opener)
        elapsed = time.monotonic() - started
        message = str(caught.value)
        for server in servers:
            with contextlib.suppress(psutil.NoSuchProcess):
                server.resume()
        remaining = (
            sorted(blob.name for blob in client.list_blobs("fault-bkt"))
            if fault == "freeze"
            else None
        )
    assert elapsed < EXIT_BOUND_SECONDS
    assert "\n" not in message
    # The first error is the upload's; the cleanup's failure only adds where things may be.
    assert message.startswith("gs://fault-bkt/p/run-1/iterator.data-00000-of-00001: upload of "), (
        message
    )
    assert f"no {MARKER_NAME} marker was written; gs://fault-bkt/p/run-1/ may still hold" in message
    assert "remove it with `gcloud storage rm -r gs://fault-bkt/p/run-1/`" in message
    if remaining is not None:  # the frozen server came back: the user's object is untouched
        assert "user/keep.txt" in remaining
        assert f"p/run-1/{MARKER_NAME}" not in remaining  # a partial run never looks whole


def test_fault_interrupt_during_a_frozen_upload_is_bounded(staged_files):
    from dlckpt.runtime import cleanup as _cleanup
    from dlckpt.runtime.signals import Interrupted, interrupts_raise

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set in the main thread")
    _cleanup.reset()
    with _own_server() as (client, servers):
        destination, opener = _faulty_destination(client, servers, staged_files, "interrupt")
        started = time.monotonic()
        with interrupts_raise(), pytest.raises(Interrupted) as caught:
            destination.put(staged_files, RUN, opener=opener)
        elapsed = time.monotonic() - started
    assert caught.value.exit_code == 143
    assert elapsed < EXIT_BOUND_SECONDS
    left = " | ".join(_cleanup.left_behind())
    assert "gs://fault-bkt/p/run-1/ may still hold any object the run wrote" in left
    _cleanup.reset()


def test_fault_cleanup_against_a_dead_server_is_bounded_and_quiet(staged_files):
    from dlckpt.runtime import cleanup as _cleanup
    from dlckpt.storage.gcs import GcsDestination, GcsLocation

    _cleanup.reset()
    with _own_server() as (client, servers):
        client.create_bucket("dead-bkt")
        destination = GcsDestination(client, GcsLocation("dead-bkt", ""))
        destination.put(staged_files, RUN)
        for server in servers:
            server.kill()
            server.wait(10)
        started = time.monotonic()
        destination.remove(RUN)  # never raises
        first = time.monotonic() - started
        started = time.monotonic()
        destination.remove(RUN)  # the endpoint did not answer: not waited for again
        second = time.monotonic() - started
        ephemeral = GcsDestination(client, GcsLocation("dead-bkt", ""), ephemeral=True)
        ephemeral.remove("run-2")  # the embedded server's objects went with it
    assert first < EXIT_BOUND_SECONDS and second < first + 1
    assert _cleanup.left_behind() == [_cleanup.left_behind()[0]] and _cleanup.left_behind()[
        0
    ].startswith("gs://dead-bkt/run-1/ may still hold")
    _cleanup.reset()


# --- local folder destination: full disk, or the staging folder itself -------------------


def test_fault_full_local_destination_is_one_line_and_keeps_the_source(small_disk, tmp_path):
    from dlckpt.storage.local import LocalDestination
    from dlckpt.storage.transfer import TransferError

    source = tmp_path / "staged"
    source.mkdir()
    (source / "iterator.index").write_bytes(os.urandom(1_000))
    (source / "iterator.data-00000-of-00001").write_bytes(os.urandom(30 * 1024 * 1024))
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    (small_disk / "keep.txt").write_text("the user's file")
    destination = LocalDestination(small_disk)
    with pytest.raises(TransferError) as caught:
        destination.put(sorted(source.iterdir()), RUN)
    message = str(caught.value)
    assert message.startswith(f"{small_disk / RUN}: copy failed (No space left on device, ")
    assert "the partial copy was removed" in message and "\n" not in message
    assert sorted(p.name for p in small_disk.iterdir()) == ["keep.txt"]
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_fault_destination_that_is_the_staging_folder_never_loses_the_checkpoint(tmp_path):
    from dlckpt.storage.local import LocalDestination
    from dlckpt.storage.transfer import TransferError

    staged = tmp_path / RUN  # LOCAL_STAGING_DIR/<run prefix>, where the checkpoint was saved
    staged.mkdir()
    (staged / "iterator.index").write_bytes(b"index")
    (staged / "iterator.data-00000-of-00001").write_bytes(b"data")
    destination = LocalDestination(tmp_path)  # GCS_TEST_BUCKET=LOCAL_STAGING_DIR
    with pytest.raises(TransferError, match="is the folder the checkpoint was saved in"):
        destination.put(sorted(staged.iterdir()), RUN)
    destination.remove(RUN)  # what the round trip does after a failed transfer
    assert (staged / "iterator.index").read_bytes() == b"index"
    assert (staged / "iterator.data-00000-of-00001").read_bytes() == b"data"

    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / RUN).mkdir()
    (other / RUN / "theirs.txt").write_text("not this run's")
    elsewhere = LocalDestination(other)
    with pytest.raises(TransferError, match="already exists"):
        elsewhere.put(sorted(staged.iterdir()), RUN)
    elsewhere.remove(RUN)
    assert (other / RUN / "theirs.txt").read_text() == "not this run's"


# --- real signals to the script, alone and as a process group, at each phase ------------


class _Script:
    """The small-buffer script in the background, its output and every descendant it had."""

    def __init__(self, args: list[str], env: dict[str, str], *, group: bool) -> None:
        self.group = group
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPTS_DIR / SMALL_BUFFER), *args],
            env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=group,
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self.seen: dict[int, str] = {}  # pid -> command line, of every descendant seen
        self._readers = [
            threading.Thread(target=self._read, args=(stream, into), daemon=True)
            for stream, into in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            into.append(line.rstrip("\n"))

    def _look(self) -> None:
        """Record every descendant, with its latest command line: a child caught between
        fork and exec still shows the parent's (CI once missed the restore that way)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.seen[child.pid] = " ".join(child.cmdline()) or self.seen.get(child.pid, "")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 400) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self._look()
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"never reached {what}:\n" + "\n".join(self.out + self.err))
            time.sleep(0.02)
        self._look()

    def send(self, sig: int) -> None:
        if self.process.poll() is not None:  # never signal a group whose leader was reaped
            pytest.fail("the script ended before the signal:\n" + "\n".join(self.out + self.err))
        if self.group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)

    def finish(self) -> tuple[int, str, float]:
        started = time.monotonic()
        try:
            code = self.process.wait(timeout=EXIT_BOUND_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail("no exit within the bound:\n" + "\n".join(self.out + self.err))
        for reader in self._readers:
            reader.join(10)
        return code, "\n".join(self.err), time.monotonic() - started

    def restore_started(self) -> bool:
        self._look()
        return any("dlckpt.roundtrip.child" in command for command in self.seen.values())

    def line_starts(self, prefix: str) -> Callable[[], bool]:
        return lambda: any(line.startswith(prefix) for line in self.out)


def _exists(pattern: str, folder: Path) -> Callable[[], bool]:
    return lambda: any(folder.glob(pattern))


# phase, signal, to the whole process group, destination ("folder" or the embedded server)
PHASES = [
    ("estimate", signal.SIGTERM, False, "folder"),
    ("fill", signal.SIGHUP, False, "folder"),
    ("save", signal.SIGTERM, True, "folder"),
    ("upload", signal.SIGINT, True, "embedded"),
    ("restore", signal.SIGTERM, False, "folder"),
    ("restore", signal.SIGHUP, True, "embedded"),
    ("restore-temp", signal.SIGTERM, False, "folder"),
]


def _restore_wrote_temp_files(run: _Script, scratch: Path) -> Callable[[], bool]:
    """Once the restore process runs: a new autograph file anywhere under the scratch folder
    (the restore's own, which it cannot remove once it is killed)."""
    before: list[int] = []

    def ready() -> bool:
        if not run.restore_started():
            return False
        count = len(list(scratch.rglob("__autograph_generated_file*")))
        if not before:
            before.append(count)
        return count > before[0]

    return ready


@pytest.mark.slow
@pytest.mark.parametrize(
    ("phase", "sig", "group", "destination"),
    PHASES,
    ids=[f"fault-{p}-{signal.Signals(s).name}{'-group' if g else ''}" for p, s, g, _ in PHASES],
)
def test_signal_at_each_phase_cleans_up_and_exits_128_plus_n(
    tmp_path, phase, sig, group, destination, small_default_estimate
):
    scratch, dest, report = tmp_path / "tmp", tmp_path / "dest", tmp_path / "r.json"
    scratch.mkdir()
    dest.mkdir()
    (dest / "keep.txt").write_text("the user's file")
    env = script_env(TMPDIR=str(scratch))
    for name in ("TEST_TMPDIR", "TMP"):
        env.pop(name, None)
    if destination == "folder":
        env["GCS_TEST_BUCKET"] = str(dest)
    args = ["--config-name", "small", "--report", str(report)]
    args += ["estimate.cache=false"] if phase == "estimate" else []
    run = _Script(args, env, group=group)
    triggers = {
        "estimate": _exists("dlckpt-estimate-*", scratch),
        "fill": run.line_starts("GCS total"),
        "save": _exists("dlckpt-small-buffer-*/checkpoint", scratch),
        "upload": run.line_starts("✓ Saved"),
        "restore": run.restore_started,
        "restore-temp": _restore_wrote_temp_files(run, scratch),
    }
    run.wait_for(triggers[phase], phase)
    run.send(sig)
    code, stderr, elapsed = run.finish()

    name = signal.Signals(sig).name
    assert code == 128 + sig, stderr
    assert _one_line(stderr) == f"✗ interrupted by {name}; the run's own files were removed"
    assert elapsed < EXIT_BOUND_SECONDS
    assert list(scratch.iterdir()) == []  # scratch, estimate folders, downloads: all gone
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]  # nothing under the run prefix
    assert (dest / "keep.txt").read_text() == "the user's file"
    assert _gone(list(run.seen)) == [], run.seen  # the restore process, the embedded server
    data = json.loads(report.read_text())
    assert (data["exit_code"], data["passed"]) == (128 + sig, False)
    if phase.startswith("restore"):
        assert any("dlckpt.roundtrip.child" in command for command in run.seen.values())
    if destination == "embedded":
        # the embedded server: the HTTPS front and fake-gcs-server behind it
        assert any(
            "_gcs_front" in command or "fake-gcs-server" in command for command in run.seen.values()
        )


@pytest.mark.slow
def test_fault_sigkill_of_the_script_takes_the_restore_process_with_it(
    tmp_path, small_default_estimate
):
    scratch, dest = tmp_path / "tmp", tmp_path / "dest"
    scratch.mkdir()
    dest.mkdir()
    env = script_env(TMPDIR=str(scratch), GCS_TEST_BUCKET=str(dest))
    run = _Script(["--config-name", "small"], env, group=False)
    run.wait_for(run.restore_started, "the restore")
    restore = [pid for pid, command in run.seen.items() if "dlckpt.roundtrip.child" in command]
    run.send(signal.SIGKILL)
    run.finish()
    assert restore and _gone(restore) == []  # no handler runs on SIGKILL: the kernel did it


@pytest.mark.slow
def test_fault_staging_folder_as_destination_keeps_the_staged_checkpoint(
    tmp_path, small_default_estimate
):
    """GCS_TEST_BUCKET=LOCAL_STAGING_DIR was a traceback, then the staged copy was deleted."""
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "keep.txt").write_text("the user's file")
    result = run_script(
        "test_dataloader_checkpoint_local_staging.py", "--config-name", "small",
        env=script_env(LOCAL_STAGING_DIR=str(staging), GCS_TEST_BUCKET=str(staging)),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    failure = [line for line in result.stdout.splitlines() if line.startswith("✗ ")]
    assert len(failure) == 1 and "is the folder the checkpoint was saved in" in failure[0]
    staged = [p for p in staging.iterdir() if p.name.startswith("dlckpt-local-staging-")]
    assert len(staged) == 1 and (staged[0] / "iterator.index").is_file()
    assert f"Staged copy kept in {staged[0]}" in result.stdout
    assert (staging / "keep.txt").read_text() == "the user's file"


def test_an_interrupt_a_library_rewraps_still_ends_as_interrupted(capsys):
    """OmegaConf, interrupted mid-operation by SIGHUP, raised its own ConfigKeyError (CI saw
    exit 4, "a bug"): the run must still end as interrupted, 129."""
    import signal as signals

    from dlckpt.cli.common import run_main
    from dlckpt.runtime.signals import Interrupted

    def body() -> int:
        try:
            raise Interrupted(signals.SIGHUP)
        except KeyboardInterrupt:
            raise ValueError("a library's own error, raised while the interrupt unwound") from None

    assert run_main(body, argv=[]) == 129
    assert capsys.readouterr().err.startswith("✗ interrupted by SIGHUP")


# --- user code that ends the process instead of raising (issue 24) ---------------------------


@pytest.mark.parametrize(
    ("body", "said"),
    [("import sys; sys.exit(5)", "called sys.exit(5)"),
     ("import os; os._exit(3)", "called os._exit(3)"),
     ("raise KeyboardInterrupt", "raised KeyboardInterrupt while building the dataset, with no signal received"),
     ("raise type('JobAborted', (BaseException,), {})('registry down')",
      "raised JobAborted while building the dataset: registry down")],
    ids=["sys.exit", "os._exit", "KeyboardInterrupt", "BaseException"],
)  # fmt: skip
def test_bad_input_builder_that_exits_is_one_line_with_the_report(tmp_path, body, said):
    """A builder that ends the process, or raises what is not an Exception (a
    BaseException subclass of the user's: a new user's got a 65-line traceback and no
    report), is bad input: exit 2 in one line, the report written."""
    name = f"exiting_{abs(hash(body))}"
    (tmp_path / f"{name}.py").write_text(f"def build(*, shuffle_buffer_size):\n    {body}\n")
    report = tmp_path / "r.json"
    report.write_text('{"passed": true, "exit_code": 0}')  # a previous run's report
    started = time.monotonic()
    result = run_in_process(
        SMALL_BUFFER, "--estimate-only", "--config-name", "small", "--report", str(report),
        f"dataloader._target_={name}.build", "~dataloader.batch_size", "~dataloader.image_size",
        "~dataloader.wrist_image_size", "~dataloader.window_size",
        "~dataloader.buffer_encoded_frames", "~dataloader.num_episodes",
        "~dataloader.steps_per_episode",
        env=script_env(PYTHONPATH=str(tmp_path)),
    )  # fmt: skip
    assert time.monotonic() - started < EXIT_BOUND_SECONDS
    assert result.returncode == 2, result.stdout + result.stderr
    line = _one_line(result.stderr)
    assert line.startswith(f"✗ dataloader: {name}.build {said}"), line
    data = json.loads(report.read_text())
    assert (data["exit_code"], data["passed"]) == (2, False)
    assert said in data["error"]


# --- config files that are not a dataloader config (issue 24) --------------------------------


def _config_run(tmp_path: Path, text: bytes | None = None, size: int = 0):
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "mine.yaml"
    if text is not None:
        path.write_bytes(text)
    else:  # a wrong file: megabytes of YAML with an unknown key
        with path.open("w") as stream:
            stream.write("dataloader:\n  _target_: x.y\n  shuffle_buffer_size: 8\nnoise:\n")
            line = "  - " + "x" * 95 + "\n"
            stream.write(line * (size // len(line)))
    report = tmp_path / "r.json"
    started = time.monotonic()
    result = run_script(
        SMALL_BUFFER, "--config-dir", str(folder), "--config-name", "mine", "--report",
        str(report), timeout=EXIT_BOUND_SECONDS,
    )  # fmt: skip
    return result, time.monotonic() - started, path, report


def test_bad_input_a_config_of_50_mb_is_one_line_at_once(tmp_path):
    result, seconds, path, report = _config_run(tmp_path, size=50_000_000)
    assert seconds < EXIT_BOUND_SECONDS
    assert result.returncode == 2
    assert _one_line(result.stderr) == (
        f"✗ config {path} is 47.7 MiB; a dataloader config is a few KB (expected a YAML file "
        "under 1.0 MiB)"
    )
    assert json.loads(report.read_text())["exit_code"] == 2


def test_bad_input_a_latin_1_config_names_the_file_and_byte(tmp_path):
    text = "# caméra\ndataloader:\n  shuffle_buffer_size: 8\n".encode("latin-1")
    result, _, path, report = _config_run(tmp_path, text=text)
    assert result.returncode == 2
    assert _one_line(result.stderr) == (
        f"✗ config {path}: not UTF-8 at byte 5 (0xe9); expected a UTF-8 YAML file (re-save it "
        "as UTF-8)"
    )
    assert json.loads(report.read_text())["exit_code"] == 2
