"""The project's own folders, found from this file (standard library only: any python3)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROJECT_CONF_DIR = PROJECT_ROOT / "conf"
# The three test scripts and check_disk_space.sh (disk_check and the bench run them).
SCRIPTS_DIR = PROJECT_ROOT / "scripts" / "tests"
