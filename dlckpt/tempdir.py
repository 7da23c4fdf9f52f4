"""TensorFlow's local temp folder: where its gs:// writer stages each whole file, and running out.

One place for the folder's resolution (TEST_TMPDIR, else TMPDIR, else TMP, else /tmp),
for a writable folder with room elsewhere, and for telling a save that died for lack of
room from any other failure. Standard library only at import (check_disk_space.sh).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def tf_temp_dir(environ: dict[str, str] | None = None) -> tuple[str, str, str | None]:
    """(folder, variable that chose it, warning) as TensorFlow resolves its local temp folder.

    TensorFlow's GCS writer stages every file there before upload; it takes the first of
    TEST_TMPDIR, TMPDIR, TMP that names an existing folder, else /tmp.
    """
    env = os.environ if environ is None else environ
    for variable in ("TEST_TMPDIR", "TMPDIR", "TMP"):
        value = env.get(variable)
        if value and os.path.isdir(value):
            warning = None
            tmpdir = env.get("TMPDIR")
            if (
                variable == "TEST_TMPDIR"
                and tmpdir
                and os.path.realpath(tmpdir) != os.path.realpath(value)
            ):
                warning = (
                    f"TEST_TMPDIR={value} silently overrides TMPDIR={tmpdir} for TensorFlow's "
                    "temporary files; unset TEST_TMPDIR or point both at the same folder"
                )
            return value, variable, warning
    return "/tmp", "default", None


def existing_ancestor(path: str) -> Path:
    """`path`, or its nearest ancestor that exists (where its free space is measured)."""
    candidate = Path(path).expanduser().absolute()
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


def roomy_folder(needed: int, exclude: str) -> tuple[str, int] | None:
    """A writable folder on another disk with at least `needed` bytes free (the roomiest)."""
    import psutil

    excluded_device = existing_ancestor(exclude).stat().st_dev
    candidates = [
        os.environ.get("LOCAL_STAGING_DIR", ""),
        str(Path.home()),
        os.getcwd(),
        "/tmp",
        "/var/tmp",
        "/mnt",
    ]
    candidates += [p.mountpoint for p in psutil.disk_partitions(all=False)]
    best: tuple[str, int] | None = None
    seen: set[int] = set()
    for folder in candidates:
        if not folder or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            continue
        device = os.stat(folder).st_dev
        if device == excluded_device or device in seen:
            continue
        seen.add(device)
        free = int(psutil.disk_usage(folder).free)
        if free >= needed and (best is None or free > best[1]):
            best = (folder, free)
    return best


# Texts TensorFlow (or the OS) uses when a checkpoint write runs out of room. The first is
# TensorFlow's GCS writer, which stages each whole file in its temp folder before upload.
DISK_FULL_TEXTS = (
    "Could not append to the internal temporary file",
    "Could not write to the internal temporary file",
    "The internal temporary file is not writable",
    "No space left on device",
    "Disk quota exceeded",
    "File too large",
    "internal temporary file",  # any other wording of TensorFlow's staging file failing
)


def is_disk_full(error: BaseException) -> bool:
    """True when a save failed for lack of room (disk, quota, or file-size limit)."""

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    return any(text in str(error) for text in DISK_FULL_TEXTS)


def disk_full_text(error: BaseException) -> str:
    """The known disk-full text in `error`, else its first 160 characters on one line."""
    text = " ".join(str(error).split())
    for known in DISK_FULL_TEXTS:
        if known in text:
            return known
    return text[:160]
