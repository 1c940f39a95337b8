"""``training.distribute``: the ``tf.distribute`` strategy of a run, its chief, and the batches
each replica trains.

Follows TensorFlow's multi-worker Keras pattern (``tensorflow.org/tutorials/distribute/
multi_worker_with_keras``): the strategy is created first, the model is built and compiled in
``strategy.scope()``, every worker runs the same program, and only the chief writes the run
directory (the other workers write their checkpoints to a temporary folder, since saving may
take part in collectives, and delete it).

**The batches.** ``training.batch_size`` is the global batch ``B``. Every worker builds the
global batches of :func:`recsampled.data.training_batches` (the order of ``(seed, epoch)``) and
keeps, of global batch ``b`` with ``n`` rows, the rows ``[⌊r·n/R⌋, ⌊(r+1)·n/R⌋)`` of each of its
replicas ``r`` (``R`` replicas in sync, ``L = R / W`` on each of ``W`` workers, worker ``w``
owning replicas ``w·L .. w·L + L - 1``). The ``R`` slices partition the global batch, so every
row of an epoch is trained by exactly one replica, once, in the step an uninterrupted
single-device run would train it (``tests/runs/test_distributed_train.py`` collects the ids),
and a run resumed at ``Position(e, b)`` continues with the same slices. The datasets come from
``strategy.distribute_datasets_from_function`` with ``AutoShardPolicy.OFF``: the sharding is
the one above, not tf.data's.

Example:
    >>> from recsampled.config import DistributeConfig
    >>> strategy = make_strategy(DistributeConfig())
    >>> strategy.num_replicas_in_sync, is_chief(strategy)
    (1, True)
    >>> batch = {"item_id": tf.range(5)}
    >>> context = tf.distribute.InputContext(1, 0, 2)  # 1 worker, 2 replicas
    >>> [s["item_id"].numpy().tolist() for s in replica_slices(
    ...     tf.data.Dataset.from_tensors(batch), context)]
    [[0, 1], [2, 3, 4]]
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from recsampled.config import ConfigError, DistributeConfig
from recsampled.data.dataset import prefetched
from recsampled.errors import RecsampledError

logger = logging.getLogger(__name__)

_IMPLEMENTATIONS = {
    "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
    "ring": tf.distribute.experimental.CommunicationImplementation.RING,
    "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
}


class WorkerMismatchError(RecsampledError):
    """Workers of one run disagree on something that must be identical (e.g. vocabularies)."""


def _split_cpu(devices: tuple[str, ...]) -> None:
    """Splits the CPU into logical devices when ``devices`` names ``/cpu:k`` with ``k >= 1``."""
    indices = [int(m.group(1)) for d in devices if (m := re.search(r"cpu:(\d+)$", d.lower()))]
    needed = max(indices, default=0) + 1
    if needed <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * needed
        )
    except RuntimeError as e:  # TF's devices are initialised already
        if len(tf.config.list_logical_devices("CPU")) < needed:
            raise ConfigError(
                f"`training.distribute.devices` names {needed} CPUs, but TensorFlow initialised "
                "its devices before the CPU could be split into logical devices; start the run "
                f"in a fresh process. Received: training.distribute.devices={list(devices)!r}."
            ) from e


@functools.cache
def make_strategy(settings: DistributeConfig) -> tf.distribute.Strategy:
    """The strategy of ``training.distribute``; create it before any other TensorFlow work.

    ``none`` is the default strategy (one device), ``mirrored`` a ``MirroredStrategy`` over
    ``devices`` (empty: TF's choice, every GPU or the CPU), ``multi_worker`` a
    ``MultiWorkerMirroredStrategy`` whose cluster comes from ``TF_CONFIG`` (without it, one
    local worker). One strategy per settings and process: a second run in the process reuses
    it (two strategies over the same devices would reuse the same collective keys, and a
    ``MultiWorkerMirroredStrategy`` can be created once per process only).
    """
    if settings.strategy == "mirrored":
        _split_cpu(settings.devices)
        return tf.distribute.MirroredStrategy(list(settings.devices) or None)
    if settings.strategy == "multi_worker":
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=_IMPLEMENTATIONS[settings.communication],
            timeout_seconds=settings.timeout_seconds,
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return tf.distribute.get_strategy()


def _task(strategy: tf.distribute.Strategy) -> tuple[str | None, int | None, dict]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, None, {}
    return resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run directory: the ``chief`` task, else ``worker`` 0
    of a cluster without one, or the only process (TF's multi-worker tutorial)."""
    task_type, task_id, cluster = _task(strategy)
    if task_type is None:
        return True
    return task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in cluster
    )


def worker_name(strategy: tf.distribute.Strategy) -> str:
    """``"worker 1"``, ``"chief 0"``, or ``"local"`` without a cluster (for messages)."""
    task_type, task_id, _ = _task(strategy)
    return "local" if task_type is None else f"{task_type} {task_id}"


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Workers in sync (``chief`` and ``worker`` tasks); 1 without a cluster."""
    _, _, cluster = _task(strategy)
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def replica_slices(
    global_batches: tf.data.Dataset, input_context: tf.distribute.InputContext
) -> tf.data.Dataset:
    """The slices of each global batch that this input pipeline's replicas train, in replica
    order (module docstring).

    Args:
        global_batches: dicts of ``[n]`` tensors, one global batch each.
        input_context: this worker's ``tf.distribute.InputContext``.

    Returns:
        For each global batch, one dict of ``[n_r]`` tensors per local replica ``r``.
    """
    replicas = input_context.num_replicas_in_sync
    local = replicas // input_context.num_input_pipelines
    first = input_context.input_pipeline_id * local

    def slices(batch: dict[str, tf.Tensor]) -> tf.data.Dataset:
        rows = tf.shape(next(iter(batch.values())), out_type=tf.int64)[0]

        def take(replica: tf.Tensor) -> dict[str, tf.Tensor]:
            begin, end = replica * rows // replicas, (replica + 1) * rows // replicas
            return {name: column[begin:end] for name, column in batch.items()}

        return tf.data.Dataset.range(first, first + local).map(take)

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return global_batches.flat_map(slices).with_options(options)


def distribute_batches(
    strategy: tf.distribute.Strategy, make_batches: Callable[[], tf.data.Dataset]
) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """``make_batches()`` (the global batches), or with several replicas the distributed
    dataset of their slices (:func:`replica_slices`) for ``Model.fit``."""
    if strategy.num_replicas_in_sync == 1:
        return make_batches()
    return strategy.distribute_datasets_from_function(
        lambda context: prefetched(replica_slices(make_batches(), context))
    )


def digest(*arrays: np.ndarray) -> int:
    """A 63-bit digest of arrays' values, dtypes and shapes (a vocabulary's fingerprint)."""
    hasher = hashlib.sha256()
    for array in arrays:
        array = np.asarray(array)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(array.tobytes() if array.dtype != object else repr(array.tolist()).encode())
    return int.from_bytes(hasher.digest()[:8], "little") >> 1


def check_identical(strategy: tf.distribute.Strategy, value: int, *, what: str) -> None:
    """Checks that every worker holds the same 63-bit ``value`` (a collective: also a barrier).

    Raises:
        WorkerMismatchError: naming ``what``, if the workers' values differ.
    """
    logger.info("%s: %s digest %016x.", worker_name(strategy), what, value)
    if num_workers(strategy) == 1:
        return
    values = strategy.gather(strategy.run(lambda: tf.constant([value], tf.int64)), axis=0).numpy()
    if len(set(values.tolist())) != 1:
        raise WorkerMismatchError(
            f"The workers built different {what} (digests {[f'{v:016x}' for v in values]}): "
            "every worker must read the same data with the same config."
        )
