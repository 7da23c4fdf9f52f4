"""Why a gs:// save died with `Could not append to the internal temporary file`, on this host.

TensorFlow's GCS writer stages each whole checkpoint file in TEST_TMPDIR, else TMPDIR, else
TMP, else /tmp (the first that names an existing folder). Besides a checkpoint that is
simply larger than that folder, the save fails when a variable points somewhere small,
the folder is a tmpfs (RAM, capped by the cgroup), several processes save at once,
killed saves left `tmp_file_tensorflow_*` files behind, a quota, the inodes or the
file-size limit run out, or other writers fill the disk. Each is one check below; each
returns a Finding. Nothing here writes into, or deletes from, the folders it inspects.
"""

from __future__ import annotations

import fnmatch
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlckpt.job_env import TEMP_VARIABLES, THIS_SHELL
from dlckpt.paths import command
from dlckpt.preflight.locations import ADVICE_MARGIN
from dlckpt.tempdir import roomy_folder, tf_temp_dir
from dlckpt.units import format_size

CONFIRMED, LIKELY, RULED_OUT, CANNOT_TELL = "confirmed", "likely", "ruled out", "cannot tell"
LEFTOVER_PATTERN = "tmp_file_tensorflow_*"
# Files in the temp folder that are not another writer's: AutoGraph's converted functions
# (TensorFlow writes one per traced Python function, this tool's own measurement included)
# are a few KB each and would otherwise make every diagnose report "other writers".
NOT_OTHER_WRITERS = (LEFTOVER_PATTERN, "__autograph_generated_file*")
# A checkpoint is an index file and a data file; the GCS writer stages each in its own file.
FILES_PER_SAVE = 2
QUOTA_OPTIONS = ("quota", "usrquota", "grpquota", "prjquota", "uquota", "gquota", "pquota")
RECENT_SECONDS = 3600  # "other large writes": files the last hour wrote into the temp folder
SCAN_LIMIT = 20_000  # entries read in the temp folder, so a huge /tmp cannot stall the check


@dataclass
class Finding:
    """One cause: what was read, the verdict and the fix. `headline` is its MOST LIKELY line."""

    cause: str
    evidence: str
    verdict: str
    fix: str = ""
    headline: str = ""
    rank: int = 99  # lower = more specific; the most specific confirmed finding is named

    def report(self) -> dict[str, Any]:
        return {
            "cause": self.cause,
            "evidence": self.evidence,
            "verdict": self.verdict,
            "fix": self.fix,
            "headline": self.headline,
        }


@dataclass
class Folder:
    """A folder and the filesystem it is on, as statvfs and the mount table describe it."""

    path: str
    exists: bool
    free: int = 0
    total: int = 0
    fstype: str = ""
    mountpoint: str = ""
    options: tuple[str, ...] = ()

    @classmethod
    def read(cls, path: str) -> Folder:
        import psutil

        if not os.path.isdir(path):
            return cls(path, exists=False)
        usage = psutil.disk_usage(path)
        mount = _mount_of(path)
        return cls(
            path,
            exists=True,
            free=int(usage.free),
            total=int(usage.total),
            fstype=mount.fstype if mount else "",
            mountpoint=mount.mountpoint if mount else "",
            options=tuple(mount.opts.split(",")) if mount else (),
        )

    def describe(self) -> str:
        """`a 20.0 MiB tmpfs` / `ext4 at /, 74.6 GiB free`."""
        if not self.exists:
            return "does not exist on this host"
        if self.fstype == "tmpfs":
            return f"a {format_size(self.total)} tmpfs, {format_size(self.free)} free"
        where = f"{self.fstype or 'filesystem'} at {self.mountpoint or '?'}"
        return f"{where}, {format_size(self.free)} free of {format_size(self.total)}"


def _mount_of(path: str) -> Any:
    import psutil

    real = os.path.realpath(path)
    best = None
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and (best is None or len(mount) > len(best.mountpoint)):
            best = part
    return best


@dataclass
class Job:
    """What the failed job saw: its temp variables, the checkpoint per process, processes."""

    env: dict[str, str]
    env_source: str
    checkpoint_bytes: int
    checkpoint_source: str
    processes: int
    processes_source: str
    processes_detected: bool  # True: assumed from the accelerators found, not configured
    # (staging folder, processes) -> the largest buffer whose checkpoints fit it there
    # (preflight.locations.largest_fitting_buffer, as every advice); 0: none, or not measured.
    largest_fitting: Callable[[str, int], int] = field(default=lambda _folder, _processes: 0)
    bytes_for: Callable[[int], int] = field(default=lambda _: 0)  # checkpoint of a buffer

    @property
    def needed(self) -> int:
        return self.checkpoint_bytes * self.processes

    def temp_folder(self) -> tuple[str, str]:
        folder, variable, _ = tf_temp_dir(self.env)
        return folder, variable


# --- the checks ----------------------------------------------------------------------------------


def _leftovers(folder: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(leftover staging files and their bytes, those still open by a running process)."""
    try:
        entries = [e for e in os.scandir(folder) if fnmatch.fnmatch(e.name, LEFTOVER_PATTERN)]
    except OSError:
        return [], []
    files = []
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                files.append((entry.path, entry.stat(follow_symlinks=False).st_blocks * 512))
        except OSError:
            continue
    return files, _open_by_someone({path for path, _ in files})


def _open_by_someone(paths: set[str]) -> list[str]:
    """Which of `paths` a running process holds open (a save in progress, not a leftover)."""
    import psutil

    if not paths:
        return []
    busy: set[str] = set()
    for process in psutil.process_iter():
        try:
            busy.update(f.path for f in process.open_files() if f.path in paths)
        except (psutil.Error, OSError):
            continue
    return sorted(busy)


def check_variables(job: Job, folder: Folder, variable: str) -> Finding:
    """TEST_TMPDIR / TMPDIR / TMP in TensorFlow's order: which one won, and whether it fits."""
    parts = []
    for name in TEMP_VARIABLES:
        value = job.env.get(name)
        if not value:
            parts.append(f"{name} unset")
        elif not os.path.isdir(value):
            parts.append(f"{name}={value} (missing here: TensorFlow skips it)")
        else:
            parts.append(f"{name}={value} ({format_size(Folder.read(value).free)} free)")
    evidence = "; ".join(parts) + f" → TensorFlow stages in {folder.path} ({folder.describe()})"
    cause = "TEST_TMPDIR / TMPDIR / TMP point somewhere small"
    skipped = [n for n in TEMP_VARIABLES if job.env.get(n) and not os.path.isdir(job.env[n])]
    if variable == "default" and not skipped:
        return Finding(cause, evidence + "; none is set", RULED_OUT, rank=6)
    if folder.free >= job.needed:
        return Finding(cause, evidence, RULED_OUT, rank=6)
    where = f"{variable}={folder.path}" if variable != "default" else folder.path
    need = _need_text(job)
    headline = f"{where} ({folder.describe()}) is too small; the checkpoint needs {need} there"
    overridden = _overridden_roomy(job, variable)
    if overridden:
        headline = (
            f"{where} ({folder.describe()}) overrides {overridden}; the checkpoint needs "
            f"{need} there"
        )
    elif skipped:
        headline = (
            f"{' and '.join(f'{n}={job.env[n]}' for n in skipped)} does not exist on this host, "
            f"so TensorFlow stages in {folder.path} ({folder.describe()}); the checkpoint "
            f"needs {need} there"
        )
    return Finding(cause, evidence, CONFIRMED, _move_fix(job, folder, variable), headline, rank=6)


def _overridden_roomy(job: Job, variable: str) -> str:
    """`TMPDIR=/big (74.5 GiB free)` when the winning variable hides a later one that would fit."""
    later = TEMP_VARIABLES[TEMP_VARIABLES.index(variable) + 1 :] if variable != "default" else ()
    for name in later:
        value = job.env.get(name)
        if value and os.path.isdir(value):
            other = Folder.read(value)
            if other.free >= job.needed and os.path.realpath(value) != os.path.realpath(
                job.env[variable]
            ):
                return f"{name}={value} ({format_size(other.free)} free)"
    return ""


def _need_text(job: Job) -> str:
    if job.processes > 1:
        return (
            f"{format_size(job.needed)} ({job.processes} processes × "
            f"{format_size(job.checkpoint_bytes)})"
        )
    return format_size(job.checkpoint_bytes)


def _move_fix(job: Job, folder: Folder, variable: str) -> str:
    fixes = []
    overridden = _overridden_roomy(job, variable) if variable == "TEST_TMPDIR" else ""
    if overridden:
        fixes.append(f"unset TEST_TMPDIR in the job, so TensorFlow uses {overridden}")
    elif variable == "TEST_TMPDIR":
        fixes.append("unset TEST_TMPDIR in the job (or point it at the same folder as TMPDIR)")
    roomy = (
        roomy_folder(job.needed, folder.path, job.env) if folder.exists and not overridden else None
    )
    if roomy is not None:
        fixes.append(
            f"export TMPDIR={roomy[0]} ({format_size(roomy[1])} free) before the job starts"
        )
    # The same search as every other advice: the folder keeps ADVICE_MARGIN free with every
    # process's checkpoint at the upper end of the estimate's ±.
    largest = job.largest_fitting(folder.path, max(job.processes, 1))
    if largest:
        size = job.bytes_for(largest)
        each = f"a {format_size(size)} checkpoint per process" if size else "per process"
        node = (
            f", {format_size(size * job.processes)} for the {job.processes} processes"
            if size and job.processes > 1
            else ""
        )
        fixes.append(
            f"or dataloader.shuffle_buffer_size={largest:,} ({each}{node}: fits {folder.path} "
            f"with {ADVICE_MARGIN:.0%} to spare at the upper end of the estimate's ±)"
        )
    fixes.append(
        f"or LOCAL_STAGING_DIR=<big disk> {command('local-staging')} (save locally, then upload)"
    )
    return "; ".join(fixes)


def check_plain_size(job: Job, folder: Folder, variable: str) -> Finding:
    """The plain story: the checkpoint is larger than the default temp folder's free space."""
    cause = "the checkpoint is larger than the temp folder's free space"
    evidence = (
        f"checkpoint {_need_text(job)} ({job.checkpoint_source}); {folder.path}: "
        f"{folder.describe()}"
    )
    if folder.free >= job.needed:
        return Finding(cause, evidence, RULED_OUT, rank=8)
    headline = (
        f"the checkpoint needs {_need_text(job)} in TensorFlow's temp folder {folder.path} "
        f"({variable}; {folder.describe()})"
    )
    return Finding(cause, evidence, CONFIRMED, _move_fix(job, folder, variable), headline, rank=8)


def check_tmpfs(job: Job, folder: Folder, variable: str) -> Finding:
    """A tmpfs is RAM: its size, the cgroup's memory cap and free RAM all bound it."""
    import psutil

    cause = "temp folder on a tmpfs (RAM; cgroup memory cap)"
    if folder.fstype != "tmpfs":
        tmp = Folder.read("/tmp")
        note = f"; /tmp is {tmp.describe()}" if folder.path != "/tmp" else ""
        return Finding(
            cause, f"{folder.path} is on {folder.fstype or 'a disk'}{note}", RULED_OUT, rank=7
        )
    limit, used, source = cgroup_memory()
    memory = psutil.virtual_memory()
    room = int(memory.available + psutil.swap_memory().free)
    evidence = f"{folder.path}: {folder.describe()}; RAM+swap available {format_size(room)}"
    if limit is not None:
        room = min(room, max(limit - used, 0))
        evidence += (
            f"; cgroup memory limit {format_size(limit)}, {format_size(used)} in use ({source})"
        )
    elif source:
        evidence += "; no cgroup memory limit"
    where = f"{variable}={folder.path}" if variable != "default" else folder.path
    fix = _move_fix(job, folder, variable) + "; or a larger tmpfs (mount -o remount,size=…)"
    if folder.free < job.needed:
        headline = (
            f"{where} is {folder.describe()} (RAM-backed); the checkpoint needs "
            f"{_need_text(job)} there"
        )
        return Finding(cause, evidence, CONFIRMED, fix, headline, rank=7)
    if room < job.needed:
        headline = (
            f"{where} is a tmpfs: its pages are memory, and only {format_size(room)} of memory "
            f"is left for it; the checkpoint needs {_need_text(job)} there"
        )
        return Finding(cause, evidence, LIKELY, fix, headline, rank=7)
    return Finding(cause, evidence, RULED_OUT, rank=7)


def cgroup_memory() -> tuple[int | None, int, str]:
    """(limit bytes or None, bytes in use, the file read) for this process's memory cgroup."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None, 0, ""
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            candidates += [(f"/sys/fs/cgroup{path}", "memory.max", "memory.current")]
        elif "memory" in controllers.split(","):
            base = "/sys/fs/cgroup/memory"
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes")
            candidates += [(f"{base}{path}", *names), (base, *names)]
    for folder, limit_name, usage_name in candidates:
        try:
            limit_text = Path(folder, limit_name).read_text().strip()
            used = int(Path(folder, usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        source = str(Path(folder, limit_name))
        if limit_text == "max" or int(limit_text) >= 2**60:
            return None, used, source
        return int(limit_text), used, source
    return None, 0, ""


def check_processes(job: Job, folder: Folder) -> Finding:
    """Several processes per host (one per accelerator) each stage a whole checkpoint at once."""
    cause = "several processes per host saving at once"
    evidence = (
        f"{job.processes} process(es) ({job.processes_source}) × "
        f"{format_size(job.checkpoint_bytes)} = {format_size(job.needed)}; "
        f"{folder.path}: {format_size(folder.free)} free"
    )
    if job.processes <= 1:
        return Finding(cause, evidence, RULED_OUT, rank=5)
    if folder.free < job.checkpoint_bytes:  # the folder's size is the cause, found above
        evidence += (
            "; one process's checkpoint alone does not fit, so fewer processes would not help"
        )
        return Finding(cause, evidence, RULED_OUT, rank=5)
    if folder.free >= job.needed:
        return Finding(cause, evidence, RULED_OUT, rank=5)
    holds = folder.free // max(job.checkpoint_bytes, 1)
    headline = (
        f"{job.processes} processes per host each stage {format_size(job.checkpoint_bytes)} "
        f"in {folder.path} ({folder.describe()}): it holds {holds} at once, not "
        f"{job.processes}; together they need {format_size(job.needed)}"
    )
    fix = (
        f"give each process its own TMPDIR on a disk with {format_size(job.checkpoint_bytes)} "
        "free, or save only from process 0 (and the other processes' iterators elsewhere); "
        + _move_fix(job, folder, "TMPDIR")
    )
    verdict = LIKELY if job.processes_detected else CONFIRMED
    if job.processes_detected:
        fix += "; set estimate.processes_per_host to the real count"
    return Finding(cause, evidence, verdict, fix, headline, rank=5)


def check_leftovers(
    job: Job, folder: Folder, leftovers: list[tuple[str, int]], busy: list[str]
) -> Finding:
    """Staging files of killed saves: TensorFlow removes them only when a writer closes."""
    cause = "leftover tmp_file_tensorflow_* staging files"
    stale = [(p, n) for p, n in leftovers if p not in busy]
    held = sum(n for _, n in stale)
    evidence = (
        f"{len(stale)} in {folder.path}, {format_size(held)}" if stale else f"none in {folder.path}"
    )
    if busy:
        evidence += f"; {len(busy)} more open by a running process (a save in progress)"
    if stale:
        evidence += f" (largest: {max(stale, key=lambda x: x[1])[0]})"
    if not stale:
        return Finding(cause, evidence, RULED_OUT, rank=4)
    command = (
        f"find {folder.path} -maxdepth 1 -name '{LEFTOVER_PATTERN}' -mmin +10 -print -delete "
        f"(after checking no save is running: fuser -v {folder.path}/{LEFTOVER_PATTERN})"
    )
    fix = f"remove them yourself (this tool never deletes): {command}"
    if folder.free >= job.needed:
        return Finding(cause, evidence, RULED_OUT, fix, rank=4)
    if folder.free + held >= job.needed:
        headline = (
            f"{len(stale)} leftover {LEFTOVER_PATTERN} file(s) hold {format_size(held)} of "
            f"{folder.path} ({folder.describe()}); the checkpoint needs {_need_text(job)} there, "
            "which fits once they are removed"
        )
        return Finding(cause, evidence, CONFIRMED, fix, headline, rank=4)
    return Finding(cause, evidence, LIKELY, fix, rank=4)


def check_inodes(job: Job, folder: Folder) -> Finding:
    """A save creates files: a filesystem out of inodes refuses them with plenty of bytes free."""
    cause = "inodes exhausted"
    try:
        stat = os.statvfs(folder.path)
    except OSError as error:
        return Finding(cause, f"statvfs {folder.path}: {error.strerror}", CANNOT_TELL, rank=2)
    if stat.f_files == 0:
        return Finding(
            cause, f"{folder.path}: the filesystem has no inode limit", RULED_OUT, rank=2
        )
    needed = FILES_PER_SAVE * job.processes
    evidence = (
        f"{folder.path}: {stat.f_favail:,} of {stat.f_files:,} inodes free; a save needs {needed}"
    )
    if stat.f_favail >= needed:
        return Finding(cause, evidence, RULED_OUT, rank=2)
    where = _where(job, folder)
    headline = (
        f"{where} ({folder.fstype or 'filesystem'}) has {stat.f_favail:,} free inodes of "
        f"{stat.f_files:,}: no new file can be created there, though "
        f"{format_size(folder.free)} is free; each save needs {needed} files"
    )
    fix = f"remove small files there (find {folder.path} -xdev -type f | head) or " + _move_fix(
        job, folder, "TMPDIR"
    )
    return Finding(cause, evidence, CONFIRMED, fix, headline, rank=2)


def _where(job: Job, folder: Folder) -> str:
    path, variable = job.temp_folder()
    return f"{variable}={path}" if variable != "default" else path


def check_file_size_limit(job: Job) -> Finding:
    """`ulimit -f`: the largest file any process of this shell may write (SIGXFSZ/EFBIG past it)."""
    cause = "file-size limit (ulimit -f)"
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft == resource.RLIM_INFINITY:
        return Finding(
            cause,
            "unlimited in this shell (run `ulimit -f` in the job's own launcher to be sure)",
            RULED_OUT,
            rank=1,
        )
    evidence = (
        f"ulimit -f {soft // 1024} (blocks of 1 KiB) = {format_size(soft)} per file; the "
        f"checkpoint's data file is ~{format_size(job.checkpoint_bytes)}"
    )
    if soft >= job.checkpoint_bytes:
        return Finding(cause, evidence, RULED_OUT, rank=1)
    headline = (
        f"the file-size limit (ulimit -f) is {format_size(soft)}: no process may write a "
        f"larger file, and TensorFlow stages the whole ~{format_size(job.checkpoint_bytes)} "
        "checkpoint file in its temp folder"
    )
    fix = (
        "`ulimit -f unlimited` in the job's launcher (or raise fsize in "
        "/etc/security/limits.conf, or the container's --ulimit fsize=-1)"
    )
    return Finding(cause, evidence, CONFIRMED, fix, headline, rank=1)


def check_quota(job: Job, folder: Folder) -> Finding:
    """Disk quotas: the mount options say whether any is enforced; `quota` reads the user's."""
    cause = "disk quota"
    if not folder.mountpoint:
        return Finding(
            cause, f"{folder.path}: its mount is not in the mount table", CANNOT_TELL, rank=3
        )
    enabled = [
        o
        for o in folder.options
        if o.split("=")[0] in QUOTA_OPTIONS or o.startswith(("usrjquota=", "grpjquota="))
    ]
    mount = f"{folder.mountpoint} ({folder.fstype})"
    if not enabled:
        return Finding(cause, f"{mount} is mounted without quota options", RULED_OUT, rank=3)
    tool = shutil.which("quota")
    if tool is None:
        return Finding(
            cause,
            f"{mount} has {','.join(enabled)}, but the `quota` tool is not installed",
            CANNOT_TELL,
            "apt-get install quota, then `quota -s` (XFS project quotas: xfs_quota -x -c report)",
            rank=3,
        )
    shown = subprocess.run(
        [tool, "-w", "-s"], capture_output=True, text=True, check=False, timeout=20
    )
    lines = [line for line in shown.stdout.splitlines() if folder.mountpoint in line or "*" in line]
    over = any("*" in line for line in lines)
    evidence = f"{mount} has {','.join(enabled)}; quota -s: {' | '.join(lines) or 'no limit shown'}"
    if not over:
        return Finding(cause, evidence, RULED_OUT, rank=3)
    headline = f"a disk quota on {folder.mountpoint} is exceeded (quota -s marks it with *)"
    return Finding(
        cause, evidence, CONFIRMED, "free space under the quota or ask for more", headline, rank=3
    )


def check_shared(job: Job, folder: Folder) -> Finding:
    """Other writers: files others wrote into the temp folder in the last hour, vs the margin."""
    cause = "temp folder shared with other large writes"
    recent, count, scanned, capped = _recent_other_bytes(folder.path)
    evidence = (
        f"{count} other file(s) written into {folder.path} in the last hour, "
        f"{format_size(recent)} (scanned {scanned:,} entries{', capped' if capped else ''}); "
        f"margin after the checkpoint: {format_size(max(folder.free - job.needed, 0))}"
    )
    if recent == 0 or folder.free < job.needed or folder.free - job.needed >= recent:
        return Finding(cause, evidence, RULED_OUT, rank=9)
    headline = (
        f"{folder.path} has room for the checkpoint ({format_size(folder.free)} free, needs "
        f"{_need_text(job)}) by less than the {format_size(recent)} others wrote there in "
        "the last hour"
    )
    fix = "give the job a temp folder of its own: " + _move_fix(job, folder, "TMPDIR")
    return Finding(cause, evidence, LIKELY, fix, headline, rank=9)


def _recent_other_bytes(path: str) -> tuple[int, int, int, bool]:
    """(bytes, files, entries scanned, capped) written under `path` in the last hour, less
    TensorFlow's staging files and AutoGraph's (NOT_OTHER_WRITERS)."""
    cutoff = time.time() - RECENT_SECONDS
    total = count = scanned = 0
    device = os.stat(path).st_dev
    stack = [path]
    while stack and scanned < SCAN_LIMIT:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            scanned += 1
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_dev != device:
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif (
                entry.is_file(follow_symlinks=False)
                and info.st_mtime >= cutoff
                and not any(fnmatch.fnmatch(entry.name, p) for p in NOT_OTHER_WRITERS)
            ):
                total += info.st_blocks * 512
                count += 1
    return total, count, scanned, scanned >= SCAN_LIMIT


# --- the diagnosis -------------------------------------------------------------------------------


@dataclass
class Diagnosis:
    job: Job
    folder: Folder
    variable: str
    findings: list[Finding]

    @property
    def most_likely(self) -> Finding | None:
        for verdict in (CONFIRMED, LIKELY):
            found = [f for f in self.findings if f.verdict == verdict and f.headline]
            if found:
                return min(found, key=lambda f: f.rank)
        return None

    def report(self) -> dict[str, Any]:
        best = self.most_likely
        return {
            "environment": dict(self.job.env),
            "environment_source": self.job.env_source,
            "temp_folder": {"path": self.folder.path, "variable": self.variable,
                            "free_bytes": self.folder.free, "total_bytes": self.folder.total,
                            "fstype": self.folder.fstype},
            "checkpoint_bytes": self.job.checkpoint_bytes,
            "checkpoint_source": self.job.checkpoint_source,
            "processes_per_host": self.job.processes,
            "processes_source": self.job.processes_source,
            "findings": [f.report() for f in self.findings],
            "most_likely_cause": best.headline if best else None,
        }  # fmt: skip


def diagnose(job: Job) -> Diagnosis:
    """Run every check against the folder TensorFlow would stage in for this job's variables."""
    path, variable = job.temp_folder()
    folder = Folder.read(path)
    leftovers, busy = _leftovers(path)
    findings = [
        check_variables(job, folder, variable),
        check_tmpfs(job, folder, variable),
        check_processes(job, folder),
        check_leftovers(job, folder, leftovers, busy),
        check_quota(job, folder),
        check_inodes(job, folder),
        check_file_size_limit(job),
        check_shared(job, folder),
        check_plain_size(job, folder, variable),
    ]
    return Diagnosis(job, folder, variable, findings)


def findings_table(findings: Sequence[Finding]) -> str:
    from tabulate import tabulate

    rows, shown = [], set()
    for finding in findings:
        fix = finding.fix or "-"
        if fix in shown and fix != "-":
            fix = "as above"
        shown.add(fix)
        rows.append([finding.cause, finding.evidence, finding.verdict, fix])
    return tabulate(
        rows,
        headers=["cause", "evidence", "verdict", "fix"],
        tablefmt="simple_grid",
        maxcolwidths=[24, 60, 11, 48],
    )


def next_steps(job: Job, folder: Folder) -> list[str]:
    """What to try when nothing on this host explains the failure (not what was given)."""
    steps = [
        f"the job may run on another host: run `{command('diagnose')}` there"
        if job.env_source != THIS_SHELL
        else "the job may run with another environment or on another host: pass its variables "
        "(--env-file job.env, from `env > job.env` in the job's shell, or TMPDIR=... "
        f"TEST_TMPDIR=...) or run `{command('diagnose')}` there",
        f"reproduce the save with the full buffer where the job stages: TMPDIR={folder.path} "
        f"{command('original', '--config-name=…')} (refuses first when it cannot fit)",
        f"watch the folder while the job saves: watch -n1 df -h {folder.path}",
    ]
    if job.processes == 1 and job.processes_source != "estimate.processes_per_host":
        steps.append("set estimate.processes_per_host if several processes per host save at once")
    return steps


def pass_line(diagnosis: Diagnosis) -> str:
    """The last line when no check found a cause: the fit answer, for the environment read.

    A ✓ only for what was checked (the checkpoint per process times the processes, against the
    folder TensorFlow stages in, as the job's variables resolve it): what a user checking a
    fix reads, distinct from the MOST LIKELY CAUSE line above it.
    """
    job = diagnosis.job
    return (
        f"✓ THIS CONFIG FITS WHERE THE JOB STAGES ITS SAVES: the checkpoint, "
        f"{_need_text(job)}, fits in {_where(job, diagnosis.folder)} "
        f"({format_size(diagnosis.folder.free)} free; environment: {job.env_source}) and no "
        "other check here found a cause"
    )


def most_likely_line(diagnosis: Diagnosis) -> str:
    best = diagnosis.most_likely
    if best is not None:
        return f"MOST LIKELY CAUSE: {best.headline}"
    return (
        "MOST LIKELY CAUSE: nothing here explains it: the checkpoint "
        f"({_need_text(diagnosis.job)}) fits in {_where(diagnosis.job, diagnosis.folder)} "
        f"({diagnosis.folder.describe()}) and every other check is ruled out or unreadable"
    )
