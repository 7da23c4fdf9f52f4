"""The project's own folders, found from this file (standard library only: any python3).

Two layouts: a source checkout (the package beside `scripts/`, `conf/` and `pyproject.toml`,
installed editable by `uv sync`) and an installed package (`pip install`, in site-packages).
The presets ship inside the package (`dlckpt/conf`; the checkout's `conf/` links to it), and
scratch goes to the checkout's git-ignored `.work/`, or the user's cache folder when installed.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
PROJECT_CONF_DIR = PACKAGE_DIR / "conf"
# The three test scripts and check_disk_space.sh (the bench runs them; a checkout only).
SCRIPTS_DIR = PROJECT_ROOT / "scripts" / "tests"
IN_CHECKOUT = (PROJECT_ROOT / "pyproject.toml").is_file() and SCRIPTS_DIR.is_dir()


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


# Scratch the tool writes and removes (estimate saves, strategy episodes): never the
# user's folders, and not site-packages when installed.
WORK_DIR = (
    PROJECT_ROOT / ".work"
    if IN_CHECKOUT
    else _user_cache() / "dataloader-checkpoint-testing" / "work"
)


def command(name: str, args: str = "") -> str:
    """How a person runs one of the tool's commands from where this copy is installed.

    A checkout: `make NAME` (with `ARGS="…"`); installed with pip: `dlckpt NAME …`.
    """
    if IN_CHECKOUT:
        return f"make {name}" + (f' ARGS="{args}"' if args else "")
    return f"dlckpt {name}" + (f" {args}" if args else "")


def doc(name: str) -> str:
    """A document of the checkout (DISK_SPACE_SOLUTIONS.md, …), named where an installed
    copy, which does not ship it, can find it."""
    return name if IN_CHECKOUT else f"{name} in the tool's repository"
