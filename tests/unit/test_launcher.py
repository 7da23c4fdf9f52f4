"""Which process this is under a real launcher (multihost.launcher): pure, no TensorFlow.

The variables are the ones each launcher documents: torchrun's RANK/WORLD_SIZE/
LOCAL_WORLD_SIZE/GROUP_RANK/TORCHELASTIC_RUN_ID, Slurm's SLURM_PROCID/SLURM_NTASKS/
SLURM_NODEID/SLURM_NNODES/SLURM_NTASKS_PER_NODE/SLURM_JOB_ID/SLURM_STEP_ID, TensorFlow's
TF_CONFIG, GKE TPU's TPU_WORKER_ID/TPU_WORKER_HOSTNAMES.
"""

from __future__ import annotations

import json

import pytest

from dlckpt.errors import UsageError
from dlckpt.multihost.launcher import read_launch


def _place(env: dict[str, str], **flags: str) -> tuple[int, int, int, int, str]:
    launch = read_launch(env, **flags)
    p = launch.process
    return p.index, p.count, p.host, launch.per_host, launch.run_id


def test_torchrun_ranks_hosts_and_rendezvous_id():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
           "TORCHELASTIC_RUN_ID": "job-7"}  # fmt: skip
    assert _place(env) == (5, 8, 1, 4, "job-7")
    # Without GROUP_RANK the host is the rank's block of LOCAL_WORLD_SIZE.
    del env["GROUP_RANK"]
    assert _place(env)[2] == 1


def test_torchruns_default_rendezvous_id_none_is_not_a_run_id():
    env = {"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"}
    with pytest.raises(UsageError, match="no run id every process shares: pass --run-id"):
        read_launch(env)
    assert _place(env, run_id="r1")[4] == "r1"


def test_srun_tasks_nodes_and_job_step():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "6", "SLURM_NODEID": "1", "SLURM_NNODES": "2",
           "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0"}  # fmt: skip
    assert _place(env) == (3, 6, 1, 3, "4242.0")
    env["SLURM_NTASKS_PER_NODE"] = "3(x2)"  # Slurm's per-node form
    assert _place(env)[3] == 3


def test_tf_config_counts_chief_then_workers_and_groups_by_host():
    cluster = {"chief": ["a:1"], "worker": ["a:2", "b:1", "b:2"]}
    env = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})}
    assert _place(env, run_id="x") == (2, 4, 1, 2, "x")


def test_tpu_workers_one_process_per_host():
    env = {"TPU_WORKER_ID": "2", "TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3"}
    assert _place(env, run_id="x") == (2, 4, 2, 1, "x")


def test_flags_win_over_the_environment():
    env = {"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "t"}
    assert _place(env, index="3", count="4", per_host="2") == (3, 4, 1, 2, "t")


@pytest.mark.parametrize(
    ("env", "flags", "names"),
    [
        ({}, {"run_id": "x"}, "no process index found: expected --process-index"),
        ({"RANK": "0"}, {"run_id": "x"}, "WORLD_SIZE: not set"),
        ({"RANK": "two", "WORLD_SIZE": "4"}, {"run_id": "x"}, "RANK='two': expected an integer"),
        ({"RANK": "4", "WORLD_SIZE": "4"}, {"run_id": "x"}, "index 4 is not below the process count 4"),
        ({}, {"index": "0", "run_id": "x"}, "--process-index and --process-count: give both"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, {"run_id": "x"}, "WORLD_SIZE='0': expected a positive"),
        ({"TF_CONFIG": "{not json"}, {"run_id": "x"}, "TF_CONFIG: expected"),
        ({"TPU_WORKER_ID": "0"}, {"run_id": "x"}, "TPU_WORKER_HOSTNAMES: expected"),
        ({"RANK": "0", "WORLD_SIZE": "1"}, {"run_id": "a/b"}, "--run-id='a/b': expected 1 to 64"),
    ],
)  # fmt: skip
def test_bad_launcher_values_are_one_line_naming_the_variable(env, flags, names):
    with pytest.raises(UsageError) as refused:
        read_launch(env, **flags)
    assert names in str(refused.value)
    assert "\n" not in str(refused.value)
