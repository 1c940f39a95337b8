"""Embedding tables sharded over parameter servers: ``ParameterServerStrategy`` with a
``variable_partitioner`` on an in-process cluster (2 workers, 2 parameter servers on 127.0.0.1,
``tf.distribute.Server`` threads, as TF's parameter-server tutorial and tests build it), and
``Model.fit`` with the sampled softmax fed the output table's shards (``weights`` as a list of
shards, TF's ``"div"`` contract of ``recsampled.losses.sampled_softmax_loss``).

The cluster needs servers created before the strategy and a fresh TF context, so it runs in a
fresh process: this file run as a script prints one JSON object, the test checks it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

NUM_CLASSES = 64  # N, rows of the output table (and of the input table)
DIM = 8  # D
NUM_SAMPLED = 16  # S


def test_sharded_tables_train_with_sampled_softmax_under_parameter_servers() -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())],
        capture_output=True, text=True, env=env, timeout=400,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-4000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    # Both tables are split in two shards by "div" (rows 0..31 on ps 0, 32..63 on ps 1).
    assert report["output_shards"] == [[32, DIM], [32, DIM]], report
    assert report["input_shards"] == [[32, DIM], [32, DIM]], report
    assert sorted(report["shard_devices"]) == ["/job:ps/replica:0/task:0/device:CPU:0",
                                               "/job:ps/replica:0/task:1/device:CPU:0"]  # fmt: skip
    # fit ran on the workers and trained: the full softmax loss fell (measured 4.16 -> 3.45 in
    # runs; the workers update asynchronously: Adam (0.05, and once 0.01 in CI) diverged, Adagrad
    # with its shrinking steps does not).
    assert report["steps"] == 40
    assert report["full_loss_after"] < report["full_loss_before"] - 0.2, report
    # The shards hold what one unsharded table would: the loss on the shards list equals the
    # loss on their concatenation (same sample), to 1e-6.
    assert report["shards_vs_concatenated"] < 1e-6, report


def _main() -> None:
    import numpy as np
    import tensorflow as tf

    from recsampled.losses import sampled_softmax_loss

    ports = _free_ports(4)
    cluster = tf.train.ClusterSpec(
        {"worker": [f"127.0.0.1:{p}" for p in ports[:2]],
         "ps": [f"127.0.0.1:{p}" for p in ports[2:]]}
    )  # fmt: skip
    # As TF's tutorial: with fewer cores than workers + 1, give the in-process workers enough
    # inter-op threads, or their steps wait on each other forever.
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=3)
    for job, count in (("worker", 2), ("ps", 2)):
        for index in range(count):
            tf.distribute.Server(
                cluster, job_name=job, task_index=index, protocol="grpc", config=config
            )
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc")
    partitioner = tf.distribute.experimental.partitioners.FixedShardsPartitioner(num_shards=2)
    strategy = tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)

    class Classifier(tf.keras.Model):
        """An input embedding and an output table, both sharded; sampled softmax in training."""

        def __init__(self) -> None:
            super().__init__()
            self.inputs_table = tf.keras.layers.Embedding(NUM_CLASSES, DIM)
            self.output_table = self.add_weight(
                name="output_table", shape=[NUM_CLASSES, DIM], initializer="glorot_uniform"
            )
            self.output_bias = self.add_weight(name="output_bias", shape=[NUM_CLASSES],
                                               initializer="zeros")  # fmt: skip

        def call(self, ids: tf.Tensor) -> tf.Tensor:
            return self.inputs_table(ids)

        def shards(self, variable: tf.Variable | None = None) -> list:
            """The shards of a ShardedVariable (the output table by default), in "div" order."""
            variable = self.output_table if variable is None else variable
            return list(variable.variables) if hasattr(variable, "variables") else [variable]

        def train_step(self, data: tuple) -> dict:
            ids, labels = data
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(sampled_softmax_loss(
                    weights=self.shards(), biases=self.shards(self.output_bias),
                    labels=labels[:, None],
                    inputs=self(ids), num_sampled=NUM_SAMPLED, num_classes=NUM_CLASSES, seed=1,
                ))  # fmt: skip
            variables = self.trainable_variables
            self.optimizer.apply_gradients(
                zip(tape.gradient(loss, variables), variables, strict=True)
            )
            return {"loss": loss}

    rng = np.random.default_rng(0)
    ids = rng.integers(0, NUM_CLASSES, size=512).astype(np.int32)
    labels = ((ids * 7 + 3) % NUM_CLASSES).astype(np.int32)  # a learnable map

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        data = tf.data.Dataset.from_tensor_slices((ids, labels)).shuffle(512, seed=0)
        return data.repeat().batch(32).shard(context.num_input_pipelines, context.input_pipeline_id)

    with strategy.scope():
        model = Classifier()
        model.compile(optimizer=tf.keras.optimizers.Adagrad(0.5), steps_per_execution=4)
        model(tf.zeros([1], tf.int32))

    def full_loss() -> float:
        logits = tf.matmul(model(ids), tf.concat(model.shards(), 0), transpose_b=True)
        logits += tf.concat(model.shards(model.output_bias), 0)
        return float(tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))  # fmt: skip

    before = full_loss()
    history = model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn), epochs=2,
                        steps_per_epoch=20, verbose=0)  # fmt: skip
    shards = model.shards()
    inputs, targets = model(ids[:32]), tf.constant(labels[:32, None], tf.int64)
    sample = tf.random.log_uniform_candidate_sampler(
        targets, num_true=1, num_sampled=NUM_SAMPLED, unique=True, range_max=NUM_CLASSES, seed=7
    )
    per_shard, whole = (
        sampled_softmax_loss(
            weights=w,
            biases=model.shards(model.output_bias),
            labels=targets,
            inputs=inputs,
            num_sampled=NUM_SAMPLED,
            num_classes=NUM_CLASSES,
            sampled_values=sample,
        )  # fmt: skip
        for w in (shards, tf.concat(shards, 0))
    )
    print(json.dumps({
        "output_shards": [s.shape.as_list() for s in shards],
        "input_shards": [v.shape.as_list() for v in model.inputs_table.embeddings.variables],
        "shard_devices": [s.device for s in shards],
        "steps": 20 * len(history.history["loss"]),
        "full_loss_before": before, "full_loss_after": full_loss(),
        "shards_vs_concatenated": float(tf.reduce_max(tf.abs(per_shard - whole))),
    }))  # fmt: skip


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


if __name__ == "__main__":
    _main()
