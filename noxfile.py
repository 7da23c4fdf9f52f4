"""nox sessions: each scenario runs in an environment installed from the committed uv.lock.

nox runs on the uv backend, so TensorFlow is downloaded once into uv's cache and linked
into each session's environment. Sessions use the interpreter nox runs on (3.10-3.13);
nothing downloads an interpreter. Arguments after `--` go to the script or to pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
SCRIPTS = ROOT / "scripts" / "tests"
WORK = ROOT / ".work"  # git-ignored scratch for the scenarios' default folders


def _install_locked(session: nox.Session, *groups: str) -> None:
    """Install exactly what uv.lock pins (no resolution) into the session's environment."""
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--no-default-groups",
        *(f"--group={group}" for group in groups),
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location, "UV_PYTHON_DOWNLOADS": "never"},
    )


def _run_script(session: nox.Session, script: str, env: dict[str, str] | None = None) -> None:
    _install_locked(session)
    session.run("python", str(SCRIPTS / script), *session.posargs, env=env or {})


@nox.session
def small_buffer(session: nox.Session) -> None:
    """Small-buffer test: estimate the sizes, then round-trip the checkpoint with a 100-element buffer."""
    _run_script(session, "test_dataloader_checkpoint_small_buffer.py")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (pytest; arguments after -- replace the defaults)."""
    _install_locked(session, "test")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy and shellcheck."""
    _install_locked(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "scripts/tests", "noxfile.py")
    shell_scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh")) + [".ci/run"]
    session.run("shellcheck", *shell_scripts)


@nox.session(default=False)
def lock(session: nox.Session) -> None:
    """Re-resolve uv.lock after a change to pyproject.toml."""
    session.run_install("uv", "lock", env={"UV_PYTHON_DOWNLOADS": "never"})
