"""Which process of a job this one is, read from the launcher that started it.

A real multi-host job starts one process per rank with its own launcher, and each reads
its place from the launcher's standard variables (first found wins):

- flags `--process-index I --process-count N` (a TPU pod's `--worker=all`, or anything else);
- torchrun: RANK, WORLD_SIZE (LOCAL_WORLD_SIZE processes per host, GROUP_RANK the host;
  TORCHELASTIC_RUN_ID the run);
- Slurm's srun: SLURM_PROCID, SLURM_NTASKS (SLURM_NODEID the host, SLURM_NTASKS_PER_NODE
  or SLURM_NTASKS / SLURM_NNODES per host; SLURM_JOB_ID and SLURM_STEP_ID the run);
- TensorFlow's TF_CONFIG: the task's place among `chief` then `worker` tasks (tasks that
  share an address's host share a host);
- GKE TPU slices: TPU_WORKER_ID, TPU_WORKER_HOSTNAMES (one process per host).

The processes never talk to each other: they meet in the bucket under a run prefix made
from a run id they all know (`--run-id`, else the launcher's), so none is chosen at random.
Pure: no TensorFlow, no I/O; bad values raise UsageError naming the variable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from dlckpt.errors import UsageError
from dlckpt.multihost.layout import Process

SOURCES = "--process-index/--process-count, RANK/WORLD_SIZE (torchrun), SLURM_PROCID/" \
    "SLURM_NTASKS (srun), TF_CONFIG, or TPU_WORKER_ID/TPU_WORKER_HOSTNAMES"  # fmt: skip
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Launch:
    """This process's place in the job: `process` (index, count, host), `per_host` processes
    on each host, `source` (which variables said so), `run_id` (shared by every process)."""

    process: Process
    per_host: int
    source: str
    run_id: str

    @property
    def hosts(self) -> int:
        return -(-self.process.count // self.per_host)

    def line(self) -> str:
        return (
            f"Launched: {self.process.label()} of {self.process.count} "
            f"({self.per_host} per host; from {self.source}), run id {self.run_id}"
        )


def read_launch(
    env: Mapping[str, str],
    *,
    index: str | None = None,
    count: str | None = None,
    per_host: str | None = None,
    run_id: str | None = None,
) -> Launch:
    """This process's Launch from the flags (`index`, `count`, `per_host`, `run_id`, as
    typed) or else `env`. Raises UsageError (exit 2, one line) when no source is found, a
    value is not a number, the index is outside the count, or no run id is known."""
    if (index is None) != (count is None):
        raise UsageError(
            "--process-index and --process-count: give both (e.g. --process-index 0 "
            "--process-count 4), or neither to read them from the launcher"
        )
    if index is not None and count is not None:
        i, n = _number(index, "--process-index", 0), _number(count, "--process-count", 1)
        host, local, source = None, None, "--process-index/--process-count"
    else:
        i, n, host, local, source = _from_env(env)
    if per_host is not None:
        local = _number(per_host, "--processes-per-host", 1)
    local = local or 1
    if i >= n:
        raise UsageError(f"{source}: process index {i} is not below the process count {n}")
    host = i // local if host is None else host
    return Launch(Process(i, n, host), local, source, _run_id(env, run_id))


def _from_env(env: Mapping[str, str]) -> tuple[int, int, int | None, int | None, str]:
    """(index, count, host or None, processes per host or None, source) from the first
    launcher whose variables are set."""
    if "RANK" in env or "WORLD_SIZE" in env:
        rank, world = _pair(env, "RANK", "WORLD_SIZE")
        local = _optional(env, "LOCAL_WORLD_SIZE", 1)
        host = _optional(env, "GROUP_RANK", 0)
        return rank, world, host, local, "torchrun's RANK/WORLD_SIZE"
    if "SLURM_PROCID" in env:
        rank, tasks = _pair(env, "SLURM_PROCID", "SLURM_NTASKS")
        nodes = _optional(env, "SLURM_NNODES", 1) or _optional(env, "SLURM_JOB_NUM_NODES", 1)
        local = _optional(env, "SLURM_NTASKS_PER_NODE", 1)
        if local is None and nodes:
            local = -(-tasks // nodes)
        return rank, tasks, _optional(env, "SLURM_NODEID", 0), local, "srun's SLURM_PROCID/NTASKS"
    if "TF_CONFIG" in env:
        return (*_from_tf_config(env["TF_CONFIG"]), "TF_CONFIG")
    if "TPU_WORKER_ID" in env:
        worker = _number(env["TPU_WORKER_ID"], "TPU_WORKER_ID", 0)
        names = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
        if not names:
            raise UsageError(
                "TPU_WORKER_HOSTNAMES: expected the slice's hosts, comma-separated "
                "(TPU_WORKER_ID is set)"
            )
        return worker, len(names), worker, 1, "TPU_WORKER_ID/TPU_WORKER_HOSTNAMES"
    raise UsageError(
        f"multi-host --launcher: no process index found: expected {SOURCES} "
        "(run it under your launcher, or give the flags)"
    )


def _from_tf_config(text: str) -> tuple[int, int, int, int]:
    """(index, count, host, per host) from TF_CONFIG: chief tasks first, then workers."""
    form = 'TF_CONFIG: expected {"cluster": {"worker": ["host:port", ...]}, "task": ' \
        '{"type": "worker", "index": 0}}'  # fmt: skip
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        addresses = [(kind, i, a) for kind in ("chief", "worker")
                     for i, a in enumerate(cluster.get(kind, []))]  # fmt: skip
        ours = [n for n, (kind, i, _) in enumerate(addresses)
                if kind == task["type"] and i == int(task["index"])]  # fmt: skip
    except (ValueError, TypeError, KeyError, AttributeError):
        raise UsageError(form) from None
    if not ours:
        raise UsageError(f"{form} (task {text[:80]} is not a chief or worker listed)")
    hosts = [str(address).rsplit(":", 1)[0] for _, _, address in addresses]
    order = list(dict.fromkeys(hosts))
    index = ours[0]
    per_host = max(hosts.count(h) for h in order)
    return index, len(addresses), order.index(hosts[index]), per_host


def _run_id(env: Mapping[str, str], given: str | None) -> str:
    """The id every process of this run shares: --run-id, torchrun's rendezvous id (not its
    default "none") and restart count, or Slurm's job, step and restart count."""
    if given is not None:
        found, source = given, "--run-id"
    elif env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        # An elastic restart keeps the rendezvous id: its restart count tells the runs apart.
        restart = env.get("TORCHELASTIC_RESTART_COUNT")
        found = env["TORCHELASTIC_RUN_ID"] + (f"-r{restart}" if restart else "")
        source = "TORCHELASTIC_RUN_ID"
    elif env.get("SLURM_JOB_ID"):
        step, restart = env.get("SLURM_STEP_ID"), env.get("SLURM_RESTART_COUNT")
        found = env["SLURM_JOB_ID"] + (f".{step}" if step else "")
        found += f"-r{restart}" if restart else ""  # a requeued job keeps its id
        source = "SLURM_JOB_ID"
    else:
        raise UsageError(
            "multi-host --launcher: no run id every process shares: pass --run-id ID (the "
            "same for every process, new for each run), or run under torchrun "
            "(TORCHELASTIC_RUN_ID) or srun (SLURM_JOB_ID)"
        )
    if not RUN_ID_PATTERN.fullmatch(found):
        raise UsageError(
            f"{source}={found!r}: expected 1 to 64 letters, digits, '.', '_' or '-' "
            "(it names the run's folder in the bucket)"
        )
    return found


def _pair(env: Mapping[str, str], index_name: str, count_name: str) -> tuple[int, int]:
    if index_name not in env or count_name not in env:
        missing = index_name if index_name not in env else count_name
        raise UsageError(f"{missing}: not set, while the launcher set its partner")
    return _number(env[index_name], index_name, 0), _number(env[count_name], count_name, 1)


def _optional(env: Mapping[str, str], name: str, lowest: int) -> int | None:
    value = env.get(name)
    return None if value in (None, "") else _number(str(value), name, lowest)


def _number(value: str, name: str, lowest: int) -> int:
    """An integer >= `lowest`; Slurm's per-node form "4(x2)" reads as 4."""
    text = str(value).strip().split("(")[0]
    if not text.isdigit() or int(text) < lowest:
        kind = "a positive integer" if lowest else "an integer from 0"
        raise UsageError(f"{name}={value!r}: expected {kind}, e.g. {lowest + 1}")
    return int(text)
