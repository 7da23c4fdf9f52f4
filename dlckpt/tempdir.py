"""TensorFlow's local temp folder: where its gs:// writer stages each whole file, and running out.

One place for the folder's resolution (TEST_TMPDIR, else TMPDIR, else TMP, else /tmp),
for a writable folder with room elsewhere, and for telling a save that died for lack of
room from any other failure. Standard library only at import (check_disk_space.sh).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


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


def roomy_folder(
    needed: int, exclude: str, env: Mapping[str, str] | None = None
) -> tuple[str, int] | None:
    """A folder on another disk with at least `needed` bytes free (the roomiest) that the
    user of `env` can write: the job's own HOME and LOCAL_STAGING_DIR, /tmp, /var/tmp, /mnt
    and the mount points. `env` is the job's environment (default: this process's); when it
    names a USER other than this process's, a folder counts only if that user may write it
    by its mode bits (so a root shell never advises /root to a job that runs as someone else).
    """
    import psutil

    env = os.environ if env is None else env
    excluded_device = existing_ancestor(exclude).stat().st_dev
    candidates = [env.get("LOCAL_STAGING_DIR", ""), env.get("HOME", "")]
    if env is os.environ:
        candidates.append(os.getcwd())
    candidates += ["/tmp", "/var/tmp", "/mnt"]
    candidates += [p.mountpoint for p in psutil.disk_partitions(all=False)]
    writable = _writable_for(env.get("USER") or env.get("LOGNAME") or "")
    best: tuple[str, int] | None = None
    seen: set[int] = set()
    for folder in candidates:
        if not folder or not os.path.isdir(folder) or not writable(folder):
            continue
        device = os.stat(folder).st_dev
        if device == excluded_device or device in seen:
            continue
        seen.add(device)
        free = int(psutil.disk_usage(folder).free)
        if free >= needed and (best is None or free > best[1]):
            best = (folder, free)
    return best


def _writable_for(user: str) -> Callable[[str], bool]:
    """Whether `user` (a login name; "" or this process's own: os.access) may write a folder:
    by the mode bits of the folder and its parents, as "other" for a user unknown here."""
    import pwd
    import stat

    try:
        account = pwd.getpwnam(user) if user else None
    except KeyError:
        account = None
    if not user or (account is not None and account.pw_uid == os.geteuid()):
        return lambda folder: os.access(folder, os.W_OK)
    if user == "root" or (account is not None and account.pw_uid == 0):
        return lambda folder: True
    # A user this host does not know (the job's container or another node): its uid and
    # groups are unknown here, so only what every user may write counts.
    uid = account.pw_uid if account is not None else -1
    groups = {account.pw_gid} | {g.gr_gid for g in _groups_of(user)} if account else set()

    def allows(path: Path, owner: int, group: int, other: int) -> bool:
        info = path.stat()
        if info.st_uid == uid:
            return bool(info.st_mode & owner)
        if info.st_gid in groups:
            return bool(info.st_mode & group)
        return bool(info.st_mode & other)

    def may_write(folder: str) -> bool:
        path = Path(folder).resolve()
        reachable = all(allows(p, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH) for p in path.parents)
        return reachable and allows(path, stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH)

    return may_write


def _groups_of(user: str) -> list[Any]:
    import grp

    return [group for group in grp.getgrall() if user in group.gr_mem]


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
