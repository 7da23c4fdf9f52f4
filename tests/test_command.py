"""The `dlckpt` console command and `python -m dlckpt`: the scripts' commands, their codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_in_process, script_env

BIN = Path(sys.executable).parent


def _command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dlckpt"), *args], capture_output=True, text=True, check=False,
        env=env or script_env(), cwd=ROOT, timeout=120,
    )  # fmt: skip


def test_the_console_command_lists_every_script_and_exits_0_on_help():
    done = _command("--help")
    assert done.returncode == 0, done.stderr
    for command in ("small-buffer", "estimate", "local-staging", "original", "strategies",
                    "multi-host", "diagnose", "disk-check"):  # fmt: skip
        assert f"  {command} " in done.stdout


def test_no_command_or_an_unknown_one_is_exit_2_with_one_line():
    assert _command().returncode == 2
    done = subprocess.run(
        [sys.executable, "-m", "dlckpt", "small-bufer"], capture_output=True, text=True,
        check=False, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "✗ dlckpt: unknown command 'small-bufer' (expected one of: small-buffer, estimate, "
        "local-staging, original, strategies, multi-host, launch-ranks, diagnose, disk-check)"
    ]


def test_a_command_keeps_the_scripts_flags_and_names_itself():
    done = _command("small-buffer", "--no-such-flag")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("✗ dlckpt small-buffer: unrecognized")


def test_a_builder_needing_a_package_this_environment_lacks_says_where_to_run(tmp_path):
    """The RLDS example imports tensorflow_datasets, which only a user's environment has."""
    report = tmp_path / "report.json"
    done = run_in_process(
        "test_dataloader_checkpoint_small_buffer.py", "--estimate-only", "--config-name", "rlds",
        f"dataloader.data_dir={tmp_path}", "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "✗ dataloader._target_='dlckpt.pipeline.rlds.build_rlds_dataset' needs the module "
        f"'tensorflow_datasets', which the environment running this ({sys.prefix}) does not "
        "have: run in your training environment (`make … PYTHON=/path/to/its/python`, or "
        "`pip install` this tool there: README, In your own environment)"
    ]
    answer = json.loads(report.read_text())
    assert answer["exit_code"] == 2
    assert answer["runtime"]["python"] == sys.executable
    assert done.stdout.splitlines()[0].startswith(f"Runtime: Python {sys.version.split()[0]}")


@pytest.fixture
def old_tensorflow_env(tmp_path: Path) -> dict[str, str]:
    """This environment's packages, with a `tensorflow` 2.14.1 shadowing the real one.

    A stand-in, not TensorFlow: the check reads the installed distribution's version before
    anything imports TensorFlow, which is the part under test; a real 2.14 is ~500 MB.
    """
    site = tmp_path / "site"
    (site / "tensorflow").mkdir(parents=True)
    (site / "tensorflow" / "__init__.py").write_text("raise ImportError('a stand-in')\n")
    info = site / "tensorflow-2.14.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tensorflow\nVersion: 2.14.1\n")
    env = script_env()
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    return env


def test_an_unsupported_tensorflow_is_exit_2_in_one_line_with_the_report(
    old_tensorflow_env, tmp_path
):
    report = tmp_path / "report.json"
    done = _command(
        "estimate", "--config-name", "small", "--report", str(report), env=old_tensorflow_env
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"✗ TensorFlow 2.14.1 at {sys.executable} is older than the oldest supported, 2.15 "
        "(expected tensorflow>=2.15; tested on 2.15 and 2.21)"
    ]
    answer = json.loads(report.read_text())
    assert answer["exit_code"] == 2 and answer["runtime"]["tensorflow"] == "2.14.1"


def test_a_measurement_cached_elsewhere_does_not_hide_that_the_pipeline_cannot_build_here(
    small_estimate_copy, tmp_path
):
    """The estimate cache is per user, shared by their environments: a size measured where
    TFDS is installed must not be stated (FITS) where the builder cannot even run."""
    import shutil

    from dlckpt.config import load_config
    from dlckpt.estimate.cache import _entry_path, config_hash

    overrides = [f"dataloader.data_dir={tmp_path}"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(small_estimate_copy))
        key = config_hash(load_config("rlds", overrides))
        measured = sorted((small_estimate_copy / "dataloader-checkpoint-testing").rglob("*.json"))
        shutil.copy(measured[0], _entry_path(key))  # a valid entry, as another env wrote it
    done = run_in_process(
        "test_dataloader_checkpoint_small_buffer.py", "--estimate-only", "--config-name", "rlds",
        *overrides, env=script_env(XDG_CACHE_HOME=str(small_estimate_copy)),
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "FITS" not in done.stdout and "ESTIMATE" not in done.stdout
    assert len(done.stderr.splitlines()) == 1
    assert "needs the module 'tensorflow_datasets'" in done.stderr


def test_a_tensorflow_function_named_from_its_class_reads_as_python_wrote_it():
    from dlckpt.pipeline.risks import _user_function_name

    name = "__inference_Dataset_interleave_classfunctools.partial_1234"
    assert _user_function_name(name) == "a functools.partial"
    assert _user_function_name("__inference_Dataset_map_decode_frame_77") == "decode_frame"


def test_writing_the_rlds_example_without_tfds_is_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "dlckpt.pipeline.rlds", "/nonexistent/rlds"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"✗ python -m dlckpt.pipeline.rlds: tensorflow_datasets is not installed for "
        f"{sys.executable} (expected the environment your RLDS loader runs in)"
    ]


def test_the_jobs_temp_folder_is_pythons_for_the_run_and_the_callers_after(tmp_path, monkeypatch):
    """`TMPDIR=/x` on the command line is the job's temp folder for the whole run, Python's
    too (the small-buffer scratch folder is tempfile's), though this process had already
    found its own; after the run, the caller's again. An in-process run left the job's to
    the rest of a test process, whose next save then named another folder than its restore
    process did."""
    import tempfile

    from dlckpt.cli.common import common_parser, parse_args, run_main

    mine, job = tmp_path / "mine", tmp_path / "job"
    mine.mkdir()
    job.mkdir()
    monkeypatch.setenv("TMPDIR", str(mine))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert tempfile.gettempdir() == str(mine)  # found, and kept by tempfile
    parser = common_parser("temp-check", "where Python's temp folder is during a run")
    seen: list[str] = []

    def body() -> int:
        parse_args(parser, [f"TMPDIR={job}", "--report", str(tmp_path / "report.json")])
        seen.append(tempfile.gettempdir())
        return 0

    assert run_main(body, []) == 0
    assert seen == [str(job)]
    assert tempfile.gettempdir() == str(mine)
