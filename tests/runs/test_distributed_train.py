"""``recsampled train`` under ``training.distribute``: two real worker processes on 127.0.0.1
(``MultiWorkerMirroredStrategy``, ``TF_CONFIG`` per process), ``MirroredStrategy`` on two
logical CPUs, a crash and a resume under each, against a single-process run on the same global
batch; and the per-replica slices of the batches (every row once per epoch).

**Tolerance.** The replicas compute the same sums in another order: replica ``r``'s loss is the
sum over its rows of the global batch (the candidates are gathered, so every score and every
softmax is the single device's), the gradients of the ``R`` replicas are all-reduced (summed),
and Keras reports the sum of the replicas' losses. Only the order of float32 additions differs,
``~1e-7`` relative per step; measured over the 46 steps here: ``2e-8`` relative on the epoch
losses, metrics equal. We allow ``1e-5`` relative on losses and one test user's ranking on the
metrics (a near-tie between two items may flip), as ``tests/runs/test_resume.py`` does.

Logical CPUs must be configured before TensorFlow initialises its devices, so the mirrored run is
this file run as a script in a fresh process (``mirrored``); the crashing workers are this file
run as a script too (``crash K ...``: the CLI, whose checkpoint callback ends the process with
``os._exit`` right after saving the checkpoint of step ``K``, as a ``kill -9`` there would).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "data": {"synthetic": {
        "num_users": 120, "num_items": 150, "num_interactions": 2500, "num_clusters": 4,
    }},
    "model": {"embedding_dim": 8, "normalize": True},
    "task": {
        "temperature": 0.1, "remove_accidental_hits": True, "logq": "streaming",
        "estimator": {"num_buckets": 512},
    },
    "training": {
        "batch_size": 64, "epochs": 2, "learning_rate": 0.01, "checkpoint_every_steps": 5,
        "max_checkpoints": 100,
    },
    "evaluation": {"ks": [5, 10]},
}  # fmt: skip
STEPS = 46  # 1441 training rows: 23 batches of 64 per epoch
CRASH_STEP = 30  # batch 7 of the second epoch
ENVIRONMENT = {"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _config(tmp_path: Path, **distribute: object) -> Path:
    values = json.loads(json.dumps(TINY))
    values["training"]["distribute"] = distribute
    path = tmp_path / f"{distribute.get('strategy', 'none')}.yaml"
    path.write_text(json.dumps(values))  # JSON is YAML
    return path


def _assert_matches(run_dir: Path, reference: dict) -> None:
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["steps"] for h in history] == [h["steps"] for h in reference["history"]]
    expected = [h["loss"] for h in reference["history"]]
    assert [h["loss"] for h in history] == pytest.approx(expected, rel=1e-5)
    metrics = json.loads((run_dir / "metrics.json").read_text())["model"]
    assert metrics == pytest.approx(reference["model"], abs=1.0 / metrics["num_users"])


@pytest.fixture(scope="module")
def single_process(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reference: one process, one device, the same config and global batch."""
    from recsampled.config import load_config
    from recsampled.runs import train

    folder = tmp_path_factory.mktemp("single")
    result = train(load_config(_config(folder)), folder / "run")
    return {"history": result.history, "model": result.metrics.as_dict()}


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _workers(command: list[str], tmp_path: Path, name: str) -> list[subprocess.CompletedProcess]:
    """Runs ``command`` as each of two workers (TF_CONFIG, own TMPDIR); returns their results."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes = []
    for index in range(2):
        temp = tmp_path / f"{name}-tmp-{index}"
        temp.mkdir()
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = os.environ | ENVIRONMENT | {"TF_CONFIG": json.dumps(tf_config), "TMPDIR": str(temp)}
        processes.append(
            subprocess.Popen(
                [sys.executable, *command],
                cwd=REPO,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        )
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=400)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, output))
    return results


def _digests(output: str) -> list[str]:
    return [line.split("digest ")[1] for line in output.splitlines() if "rows digest" in line]


def test_two_workers_crash_resume_and_match_one_process(tmp_path, single_process):
    config = _config(tmp_path, strategy="multi_worker", timeout_seconds=120)
    run_dir = tmp_path / "run"
    train = ["train", "--config", str(config), "--output", str(run_dir)]

    crashed = _workers([__file__, "crash", str(CRASH_STEP), *train], tmp_path, "crash")
    assert [r.returncode for r in crashed] == [3, 3], crashed[0].stdout[-3000:]
    assert not (run_dir / "metrics.json").exists()

    finished = _workers(["-m", "recsampled", *train], tmp_path, "resume")
    for result in finished:
        assert result.returncode == 0, result.stdout[-4000:]
        assert f"Resuming from {run_dir / 'checkpoints' / f'ckpt-{CRASH_STEP}'}" in result.stdout
    chief, other = (r.stdout for r in finished)
    # Every worker built the same vocabularies and rows (checked by a gather; logged by each).
    assert _digests(chief) == _digests(other) and len(_digests(chief)) == 1
    assert "recall@10" in chief and "not the chief" in other
    # Only the chief wrote: the run directory holds the chief's checkpoints, and the other
    # worker's temporary checkpoint folder is gone.
    assert not list((tmp_path / "resume-tmp-1").iterdir())
    checkpoints = {p.name for p in (run_dir / "checkpoints").glob("ckpt-*.index")}
    assert f"ckpt-{STEPS}.index" in checkpoints and "ckpt-5.index" in checkpoints
    _assert_matches(run_dir, single_process)


def test_mirrored_two_devices_crash_resume_and_match_one_device(tmp_path, single_process):
    process = subprocess.run(
        [sys.executable, __file__, "mirrored", str(_config(tmp_path, strategy="mirrored",
                                          devices=["/cpu:0", "/cpu:1"])), str(tmp_path)],
        cwd=REPO, env=os.environ | ENVIRONMENT, text=True,
        capture_output=True, timeout=400,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-4000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    assert report["resumed_from"] == [1, CRASH_STEP - STEPS // 2]
    _assert_matches(tmp_path / "run", single_process)
    # The ids each replica trained in the first epoch: every row once, and replica r holds
    # rows [r·n/2, (r+1)·n/2) of each global batch in the (seed, epoch) order.
    assert report["rows_seen"] == report["num_rows"] and report["each_once"]
    assert report["slices_equal_global_batches"]


def test_replica_slices_partition_every_global_batch():
    import tensorflow as tf

    from recsampled.data import Position, synthetic, training_batches
    from recsampled.data.dataset import START
    from recsampled.runs.distribute import replica_slices

    log = synthetic.generate(num_users=30, num_items=40, num_interactions=200, seed=1)
    interactions = log.to_interactions()
    rows = interactions.user_ids.astype(np.int64) * 1000 + interactions.item_ids  # one per row
    options = dict(batch_size=16, seed=3, end_epoch=2)

    def batches(start: Position = START) -> tf.data.Dataset:
        return training_batches(interactions, start=start, **options)

    global_batches = [b["user_id"].numpy() * 1000 + b["item_id"].numpy() for b in batches()]
    assert len(interactions) % 16 != 0  # a smaller last batch, split too
    for workers, local in ((2, 1), (2, 2), (1, 3)):
        replicas = workers * local
        per_replica = [[] for _ in range(replicas)]
        for worker in range(workers):
            context = tf.distribute.InputContext(workers, worker, replicas)
            for k, piece in enumerate(replica_slices(batches(), context)):
                ids = piece["user_id"].numpy() * 1000 + piece["item_id"].numpy()
                per_replica[worker * local + k % local].append(ids)
        for b, batch in enumerate(global_batches):  # the slices, in replica order, are batch b
            np.testing.assert_array_equal(np.concatenate([p[b] for p in per_replica]), batch)
        first_epoch = [p[b] for p in per_replica for b in range(len(global_batches) // 2)]
        np.testing.assert_array_equal(np.sort(np.concatenate(first_epoch)), np.sort(rows))
    # Resumed at (1, 3): the slices an uninterrupted run would train from there on.
    context = tf.distribute.InputContext(2, 1, 2)
    tail = [p["item_id"].numpy() for p in replica_slices(batches(Position(1, 3)), context)]
    full = [p["item_id"].numpy() for p in replica_slices(batches(), context)]
    for a, b in zip(tail, full[len(full) - len(tail) :], strict=True):
        np.testing.assert_array_equal(a, b)


# -- the scripts --------------------------------------------------------------------------------


def _crash_main(step: int, argv: list[str]) -> int:
    """``recsampled train`` whose process dies right after saving the checkpoint of ``step``."""
    from recsampled import cli
    from recsampled.runs import pipeline

    class DieAfterStep(pipeline.CheckpointCallback):
        def save(self) -> str:
            path = super().save()
            if self.global_step == step:
                sys.stdout.flush()
                os._exit(3)
            return path

    pipeline.CheckpointCallback = DieAfterStep
    return cli.main(argv)


def _mirrored_main(config_file: str, folder: str) -> None:
    from recsampled.config import load_config
    from recsampled.runs import pipeline, train

    class _Crash(Exception):
        pass

    class CrashAfterStep(pipeline.CheckpointCallback):
        def save(self) -> str:
            path = super().save()
            if self.global_step == CRASH_STEP:
                raise _Crash
            return path

    config = load_config(config_file)
    original, pipeline.CheckpointCallback = pipeline.CheckpointCallback, CrashAfterStep
    try:
        train(config, Path(folder) / "run")
    except _Crash:
        pass
    pipeline.CheckpointCallback = original
    resumed = train(config, Path(folder) / "run")
    print(json.dumps({"resumed_from": list(resumed.resumed_from), **_replica_ids(config)}))


def _replica_ids(config) -> dict:  # noqa: ANN001
    """The ids each replica of the mirrored strategy trains in epoch 0, from the run's data."""
    import tensorflow as tf

    from recsampled.data import training_batches
    from recsampled.runs.build import load_split
    from recsampled.runs.distribute import distribute_batches, make_strategy

    strategy = make_strategy(config.training.distribute)
    log = load_split(config.data).train
    settings = config.training

    def batches() -> tf.data.Dataset:
        return training_batches(log, batch_size=settings.batch_size, seed=settings.seed)

    def ids(features: dict) -> np.ndarray:
        return features["user_id"].numpy().astype(np.int64) * 10**6 + features["item_id"].numpy()

    seen, equal = [], True
    distributed = distribute_batches(strategy, batches)
    for whole, per_replica in zip(batches(), distributed, strict=True):
        pieces = [ids(p) for p in strategy.experimental_local_results(per_replica)]
        n = len(ids(whole))
        equal &= [len(p) for p in pieces] == [n // 2, n - n // 2]
        equal &= bool(np.array_equal(np.concatenate(pieces), ids(whole)))
        seen.extend(np.concatenate(pieces).tolist())
    rows = set((log.user_ids.astype(np.int64) * 10**6 + log.item_ids).tolist())
    return {
        "num_rows": len(rows),
        "rows_seen": len(seen),
        "each_once": len(set(seen)) == len(seen) and set(seen) == rows,
        "slices_equal_global_batches": bool(equal),
    }


if __name__ == "__main__":
    if sys.argv[1] == "crash":
        sys.exit(_crash_main(int(sys.argv[2]), sys.argv[3:]))
    _mirrored_main(sys.argv[2], sys.argv[3])
