"""Facts about the machine a benchmark ran on: cores, RAM, load, TensorFlow, filesystems."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def filesystem_of(folder: str | Path) -> dict[str, Any]:
    """The mount holding `folder`: mount point, filesystem type, device, free bytes."""
    import psutil

    from dlckpt.diagnose.checks import _mount_of

    best = _mount_of(str(folder))
    return {
        "folder": str(folder),
        "mountpoint": best.mountpoint if best else None,
        "fstype": best.fstype if best else None,
        "device": best.device if best else None,
        "free_bytes": int(psutil.disk_usage(os.path.realpath(folder)).free),
    }


def machine_facts(folders: dict[str, str | Path]) -> dict[str, Any]:
    """CPU count, RAM, load averages (1, 5, 15 min), versions, and each folder's filesystem."""
    import psutil

    from dlckpt.runtime.tf_import import import_tensorflow

    memory = psutil.virtual_memory()
    return {
        "taken_at_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_total_bytes": int(memory.total),
        "ram_available_bytes": int(memory.available),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": import_tensorflow().__version__,
        "filesystems": {role: filesystem_of(path) for role, path in folders.items()},
    }
