"""The restore child: resume a saved iterator in a fresh process and digest what it yields.

A same-process restore hides unseeded randomness (the restored pipeline shares the
process's random state and can look identical), so the restore always runs in a fresh
Python process (`python -m dlckpt.roundtrip.child REQUEST RESULT`), as a resumed training
job would. Every caller (the round trip, the strategies, the bench) uses this one protocol:
a request file in, a result file out, the parent-death signal, a timeout, the job's own
environment (its temp folder too), with autograph's generated files in the run's folder.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlckpt.ckpt_io import restore_grain_iterator, restore_iterator
from dlckpt.roundtrip.digest import DigestStream, stream_from_json, take_digests
from dlckpt.runtime.signals import die_with_parent
from dlckpt.runtime.tf_import import quiet_absl

# The saved state a restore reads: a tf.train.Checkpoint prefix, or a Grain iterator's JSON.
TF_CHECKPOINT, GRAIN_STATE = "tf.train.Checkpoint", "grain"


@dataclass
class RestoreResult:
    stream: DigestStream
    restore_seconds: float
    error: str | None = None
    # The restore process's build's random seeds and other constants (pipeline.seeds;
    # None: not read).
    seeds: list[tuple[str, int, int]] | None = None
    constants: list[tuple[str, str]] | None = None


def restore_in_new_process(
    dataloader_cfg: dict[str, Any],
    prefix: str | Path,
    expected: DigestStream,
    workdir: Path,
    *,
    timeout_seconds: float | None = None,
    env: dict[str, str] | None = None,
    state_format: str = TF_CHECKPOINT,
) -> RestoreResult:
    """Run the restore child in a fresh process: build, restore, digest as many batches.

    `prefix` is a tf.train.Checkpoint prefix (a path or gs:// URI), or with
    `state_format=GRAIN_STATE` the JSON file of a Grain iterator's state.

    The new process reads one batch more than `expected` holds when the original stream
    ended there, so a restored stream that goes on is caught. `env` adds variables to the
    child's environment. A child still running after `timeout_seconds` is killed and the
    result says so.
    """
    request = workdir / "restore_request.json"
    result_path = workdir / "restore_result.json"
    batches = len(expected.digests) + (1 if expected.ended else 0)
    request.write_text(
        json.dumps(
            {
                "dataloader": dataloader_cfg,
                "prefix": str(prefix),
                "batches": batches,
                "format": state_format,
                "autograph_dir": str(_autograph_dir(workdir)),
            }
        )
    )
    # Each restore writes its own result: a process that dies must not leave an earlier
    # restore's result to be read as its own.
    result_path.unlink(missing_ok=True)
    child_env = {**os.environ, **(env or {})}
    args = [str(request), str(result_path)]
    code, stderr = _run_child(args, child_env, workdir, timeout_seconds)
    if code is None:  # killed at the timeout
        return RestoreResult(
            DigestStream([], 0, False),
            0.0,
            f"the restore process did not finish within {timeout_seconds:.0f} s "
            "(roundtrip.restore_timeout_seconds) and was stopped",
        )
    if not result_path.exists():
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        return RestoreResult(
            DigestStream([], 0, False),
            0.0,
            f"restore process exited {code}: {tail}",
        )
    data = json.loads(result_path.read_text())
    seeds, constants = data.get("seeds"), data.get("constants")
    return RestoreResult(
        stream_from_json(data),
        data["restore_seconds"],
        data.get("error"),
        [tuple(draw) for draw in seeds] if seeds is not None else None,  # type: ignore[misc]
        [tuple(c) for c in constants] if constants is not None else None,  # type: ignore[misc]
    )


def _run_child(
    args: list[str], env: dict[str, str], workdir: Path, timeout_seconds: float | None
) -> tuple[int | None, str]:
    """Run `python -m dlckpt.roundtrip.child ARGS` as a new process, or forked from a warm
    one where the caller turned that on (runtime.warm): (exit code, None when it was killed
    at the timeout; its stderr)."""
    from dlckpt.runtime import warm

    if warm.enabled():
        output = workdir / "restore-output.txt"
        code = warm.run(
            "dlckpt.roundtrip.child:_restore_main", args,
            env=env, cwd=os.getcwd(), output=str(output), timeout=timeout_seconds,
        )  # fmt: skip
        text = output.read_text(errors="replace") if output.exists() else ""
        output.unlink(missing_ok=True)
        return code, text
    try:
        completed = subprocess.run(
            die_with_parent([sys.executable, "-m", "dlckpt.roundtrip.child", *args]),
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_seconds,
        )
    except subprocess.TimeoutExpired:  # run() has killed the child
        return None, ""
    return completed.returncode, completed.stderr


def _autograph_dir(workdir: Path) -> Path:
    """The folder for the restore's autograph files: the run's own, removed with it."""
    folder = workdir / "restore-tmp"
    folder.mkdir(exist_ok=True)
    return folder


def _autograph_files_in(folder: str) -> None:
    """Have TensorFlow's autograph write the code it generates into `folder`.

    Autograph writes a file per converted function into the temp folder and removes it at
    exit (atexit); a restore stopped by an interrupt is killed and cannot, so its files go
    in the run's folder, removed with it. Only autograph's: the user's builder sees the
    job's own temp folder, as a resumed job would. Pointing the whole process's TMPDIR at
    the run's folder changed what builders that name a path under the temp folder built
    (a manifest, a cache, a statistics file): a new user's check got "holds other
    constants" and "does not restore" for pipelines that resume. Autograph's loader has
    called tempfile.NamedTemporaryFile this way since TensorFlow 2.2; where it does not,
    its files go to the temp folder as they would in the job.
    """
    import functools
    import tempfile

    try:
        from tensorflow.python.autograph.pyct import loader
    except ImportError:
        return
    if getattr(loader, "tempfile", None) is not tempfile:
        return

    class _InFolder:
        NamedTemporaryFile = functools.partial(tempfile.NamedTemporaryFile, dir=folder)

        def __getattr__(self, name: str) -> Any:
            return getattr(tempfile, name)

    loader.tempfile = _InFolder()


def _build_tf(dataloader_cfg: dict[str, Any]) -> Any:
    from omegaconf import OmegaConf

    from dlckpt.pipeline.build import instantiate_dataset

    return instantiate_dataset(OmegaConf.create(dataloader_cfg))


def _build_grain(dataloader_cfg: dict[str, Any]) -> Any:
    from hydra.utils import instantiate

    with quiet_absl():
        return instantiate(dataloader_cfg, _convert_="all")


def _restore_main(argv: list[str]) -> int:
    """Entry point of the fresh process (not a user-facing command)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("request")
    parser.add_argument("result")
    args = parser.parse_args(argv)
    request = json.loads(Path(args.request).read_text())
    result: dict[str, Any] = {"digests": [], "elements": 0, "ended": False, "restore_seconds": 0.0}
    if request.get("autograph_dir"):
        _autograph_files_in(request["autograph_dir"])
    try:
        grain = request.get("format") == GRAIN_STATE
        dataset = _build_grain(request["dataloader"]) if grain else _build_tf(request["dataloader"])
        if not grain:  # this process's only build: what a resumed job's build holds
            from dlckpt.pipeline.seeds import first_build, first_constants

            result["seeds"] = first_build(request["dataloader"])
            result["constants"] = first_constants(request["dataloader"])
        restore = restore_grain_iterator if grain else restore_iterator
        started = time.perf_counter()
        iterator = restore(dataset, request["prefix"])
        result["restore_seconds"] = time.perf_counter() - started
        stream = take_digests(iterator, request["batches"])
        result.update(digests=stream.digests, elements=stream.elements, ended=stream.ended)
        # This process ends with os._exit (runtime.signals.exit_process): an iterator still
        # alive then keeps what it holds on disk. A cache() to files keeps its lockfile and
        # the user's next run of the pipeline fails (AlreadyExistsError; a new user's check).
        del iterator, dataset
        gc.collect()
    except Exception as error:
        result["error"] = (
            f"restore failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}"
        )
    Path(args.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    from dlckpt.runtime.signals import exit_process

    exit_process(_restore_main(sys.argv[1:]))
