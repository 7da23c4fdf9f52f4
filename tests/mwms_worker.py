"""Run by tests/test_multi_worker_strategy.py: one worker of a MultiWorkerMirroredStrategy job.

    python mwms_worker.py save INDEX PORTS FOLDER
    python mwms_worker.py restore INDEX PORTS FOLDER

Every worker of the cluster (PORTS: comma-separated, one per worker on 127.0.0.1, set as
TF_CONFIG) runs the same mode at once. `save` first tries what TensorFlow's distributed
input offers, `tf.train.Checkpoint(iterator=iter(strategy.distribute_datasets_from_function(
dataset_fn)))`, and records what happens; then the way that works: the worker's own
tf.data iterator of `dataset_fn(input_context)`, its batches fed to `strategy.run` and
all-reduced across the workers for a few steps, saved with tf.train.Checkpoint, then the
next batches recorded. `restore` (new processes, a new cluster) restores that iterator and
takes the same batches. Each writes FOLDER/<mode>-<index>.json.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
STEPS_BEFORE_SAVE = 5
BATCHES_COMPARED = 5


def main(mode: str, index: int, ports: list[str], folder: str) -> None:
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    })  # fmt: skip
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        shard = tf.data.Dataset.range(100_000).shard(
            context.num_input_pipelines, context.input_pipeline_id
        )
        return shard.shuffle(64, seed=7).batch(4)

    record: dict[str, object] = {"tensorflow": tf.__version__, "workers": len(ports)}
    if mode == "save":
        distributed = iter(strategy.distribute_datasets_from_function(dataset_fn))
        record["distributed_iterator_type"] = type(distributed).__name__
        try:
            tf.train.Checkpoint(iterator=distributed)
            record["distributed_checkpoint"] = "accepted"
        except Exception as error:  # what TensorFlow does is what the test records
            record["distributed_checkpoint"] = f"{type(error).__name__}: {error}"
    context = tf.distribute.InputContext(
        num_input_pipelines=len(ports), input_pipeline_id=index,
        num_replicas_in_sync=strategy.num_replicas_in_sync,
    )  # fmt: skip
    iterator = iter(dataset_fn(context))
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    prefix = os.path.join(folder, f"worker-{index}")
    if mode == "save":

        @tf.function
        def step(batch: tf.Tensor) -> tf.Tensor:
            per_replica = strategy.run(tf.reduce_sum, args=(batch,))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        record["all_reduced"] = [int(step(next(iterator))) for _ in range(STEPS_BEFORE_SAVE)]
        record["saved"] = checkpoint.write(prefix)
    else:
        checkpoint.read(prefix).assert_consumed()
    record["batches"] = [next(iterator).numpy().tolist() for _ in range(BATCHES_COMPARED)]
    with open(os.path.join(folder, f"{mode}-{index}.json"), "w") as out:
        json.dump(record, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4])
