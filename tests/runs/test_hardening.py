"""Nothing lost, fail before the work (issue 16): run-folder locks and ownership, the data's
fingerprint, checks before training, the NaN guard, Ctrl-C and a full disk.

One tiny CSV log (60 users x 8 items) trained for one epoch of a few steps; real processes where
the behaviour is about processes (a lock holder, two concurrent exports, SIGINT).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from recsampled import _io, cli
from recsampled.config import Config, load_config
from recsampled.errors import DataError, FolderInUseError, RunDirectoryError, TrainingError
from recsampled.runs import RunDirectory, export_run, train
from recsampled.runs.directory import LOCK
from recsampled.training import guards

REPO = Path(__file__).resolve().parents[2]
ENV = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}


def _write_log(path: Path, *, seed: int = 0, weights: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    rows = ["user,item,timestamp" + (",weight" if weights else "")]
    for user in range(60):
        for k, item in enumerate(rng.choice(40, size=8, replace=False)):
            rows.append(f"u{user},i{item},{1000 + k}" + (",0" if weights else ""))
    path.write_text("\n".join(rows) + "\n")
    return path


def _config(log: Path, *overrides: str) -> Config:
    base = [
        "data.source=file", f"data.path={log}", "model.embedding_dim=4",
        "training.batch_size=64", "training.epochs=1", "training.checkpoint_every_steps=2",
        "evaluation.ks=[5]",
    ]  # fmt: skip
    return load_config(overrides=[*base, *overrides])


def _hold_lock(lock_file: Path) -> subprocess.Popen:
    """Another process holding ``lock_file`` through recsampled._io.claim (until killed)."""
    code = (
        "import sys, time; from recsampled._io import claim\n"
        f"with claim({str(lock_file)!r}, folder='x', what='hold it'):\n"
        "    print('ready', flush=True); time.sleep(120)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def test_a_second_process_cannot_train_into_a_claimed_folder(tmp_path, capsys):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    holder = _hold_lock(run.path / LOCK)
    try:
        with pytest.raises(FolderInUseError) as error:
            run.prepare(Config())
        assert error.value.pid == holder.pid
        assert str(run.path) in str(error.value) and f"process {holder.pid}" in str(error.value)
        status = cli.main(["train", "--output", str(run.path)])
        assert status == 2 and f"process {holder.pid} holds its lock" in capsys.readouterr().err
        assert not run.config_file.exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()
    run.prepare(Config())  # the lock died with its holder
    assert run.config_file.exists()


def test_a_folder_of_someone_elses_files_is_refused_and_force_keeps_them(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    run = RunDirectory(folder)
    with pytest.raises(RunDirectoryError, match="not a recsampled run: it holds notes.txt"):
        run.prepare(Config())
    assert sorted(p.name for p in folder.iterdir()) == [LOCK, "notes.txt"]
    run.prepare(Config(), force=True)  # beside them
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    tf.train.CheckpointManager(checkpoint, str(run.checkpoints), max_to_keep=1).save()
    run.prepare(load_config(overrides=["training.epochs=3"]), force=True)  # clears its own only
    assert (folder / "notes.txt").read_text() == "keep me" and run.latest_checkpoint() is None

    # A part of theirs where the run writes its own is never replaced, even with force.
    other = tmp_path / "theirs"
    (other / "vocabulary").mkdir(parents=True)
    (other / "vocabulary" / "users.csv").write_text("alice\n")
    (other / "metrics.json").write_text("{}")
    for force in (False, True):
        with pytest.raises(RunDirectoryError, match="metrics.json, vocabulary, which recsampled"):
            RunDirectory(other).prepare(Config(), force=force)
    assert (other / "vocabulary" / "users.csv").read_text() == "alice\n"
    assert (other / "metrics.json").read_text() == "{}" and not (other / "config.yaml").exists()


def test_rename_noreplace_never_replaces_a_folder_made_meanwhile(tmp_path):
    target = tmp_path / "artifact"
    with pytest.raises(FileExistsError):
        with _io.atomic_directory(target, overwrite=False) as folder:
            (folder / "new").write_text("new")
            target.mkdir()  # someone else's export, finished meanwhile
            (target / "manifest.json").write_text("theirs")
    assert (target / "manifest.json").read_text() == "theirs"
    assert not _io.siblings(target, "tmp")  # our temporary folder was removed


def test_changed_data_refuses_to_resume_before_writing_and_disk_full_says_what_is_kept(
    tmp_path, monkeypatch, capsys
):
    log = _write_log(tmp_path / "log.csv")
    config_file = tmp_path / "c.yaml"
    config_file.write_text(_config(log).to_yaml())
    run = RunDirectory(tmp_path / "run")
    command = ["train", "-q", "--config", str(config_file), "--output", str(run.path)]
    real_write = _io.write_file

    def full_disk(path, write):
        if Path(path).name == "history.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, write)

    monkeypatch.setattr(_io, "write_file", full_disk)
    assert cli.main(command) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "the disk is full" in err and "history.json" in err
    assert "Kept: the checkpoint of step 7" in err and "run the same command again" in err
    monkeypatch.undo()
    manifest = json.loads((run.path / ".recsampled-run.json").read_text())
    assert manifest["data"]["files"][0]["size"] == log.stat().st_size

    vocabulary = {p.name: p.read_bytes() for p in run.vocabulary.iterdir()}
    _write_log(log, seed=1)  # the same size and ids, other rows: another id-column hash
    with pytest.raises(RunDirectoryError, match="checkpoints trained on other data") as error:
        train(_config(log), run.path)
    assert "user/item id columns" in str(error.value)
    assert {p.name: p.read_bytes() for p in run.vocabulary.iterdir()} == vocabulary


def test_nan_loss_stops_at_once_and_nothing_nan_is_saved(tmp_path):
    log = _write_log(tmp_path / "log.csv")
    config = _config(log, "training.optimizer=sgd", "training.learning_rate=1.0e+30",
                     "training.epochs=3", "training.checkpoint_every_steps=1")  # fmt: skip
    run = RunDirectory(tmp_path / "run")
    stopped = r"Training stopped at step \d+ \(epoch 1, batch \d+\): (the loss|the weights)"
    with pytest.raises(TrainingError, match=stopped) as error:
        train(config, run.path)
    assert "training.learning_rate=1e+30 is large" in str(error.value)
    assert not run.towers.exists() and not run.metrics_file.exists()
    for path in tf.train.get_checkpoint_state(str(run.checkpoints)).all_model_checkpoint_paths:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.isfinite(value).all(), (path, name)
    assert int(run.latest_checkpoint().rsplit("-", 1)[1]) < error.value.step

    # The guard alone: a finite loss, weights made non-finite by the step's update.
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(1,))])
    model.compile(optimizer=tf.keras.optimizers.SGD(3e38), loss="mse")
    guard = guards.FiniteLossGuard(every_steps=1)
    with pytest.raises(TrainingError, match="step 1 .*: the weights .* are no longer finite"):
        model.fit(np.ones((2, 1)), np.full((2, 1), 1e3), callbacks=[guard], verbose=0)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["data.split.kind=time_cut", "data.split.cutoff=5000"], DataError,
         "The test part of split 'time_cut' of {log} is empty"),
        (["data.weight_col=weight"], DataError, "Every weight in column 'weight' of {log} is 0"),
        (["model.embedding_dim=100000000", "training.optimizer=adam"], ValueError,
         "`model.embedding_dim` is too large for this machine: the embedding tables need about "
         "120,000,000,000 bytes (111.8 GiB: (60 users + 40 items) x 100,000,000 x 4 bytes x 3 "
         "copies with optimizer='adam'), but 17,179,869,184 bytes (16.0 GiB) are available"),
    ],
    ids=["empty test part", "all-zero weights", "embedding tables beyond memory"],
)  # fmt: skip
def test_impossible_runs_fail_before_training(tmp_path, monkeypatch, overrides, error, message):
    assert guards.available_memory() > 0  # this machine's, read from /proc/meminfo
    monkeypatch.setattr(guards, "available_memory", lambda: 2**34)  # the same on every machine
    log = _write_log(tmp_path / "log.csv", weights=True)
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(error) as raised:
        train(_config(log, *overrides), run.path)
    assert message.format(log=log) in str(raised.value)
    assert not run.checkpoints.exists() and not run.vocabulary.exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hardening")
    log = _write_log(folder / "log.csv")
    return train(_config(log), folder / "run").run_dir


def test_two_concurrent_exports_one_succeeds_the_other_fails_clearly(trained_run, tmp_path):
    output = tmp_path / "artifact"
    command = [sys.executable, "-m", "recsampled", "export", "--run", str(trained_run),
               "--output", str(output), "--index", "flat", "-q"]  # fmt: skip
    processes = [
        subprocess.Popen(command, cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in results) == [0, 2], results
    (failed,) = [err for code, err in results if code == 2]
    assert "Traceback" not in failed
    assert "is in use: process" in failed or "`output_dir` already exists" in failed
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["num_items"] == 40
    assert not list(tmp_path.glob(".artifact.tmp-*"))

    # In one process, deterministically: a held output lock fails an export at once.
    holder = _hold_lock(tmp_path / ".second.lock")
    try:
        started = time.monotonic()
        with pytest.raises(FolderInUseError, match=f"process {holder.pid}"):
            export_run(trained_run, tmp_path / "second", index="flat")
        assert time.monotonic() - started < 5 and not (tmp_path / "second").exists()
    finally:
        holder.kill()
        holder.wait()


def test_ctrl_c_ends_with_one_line_saying_what_was_kept(tmp_path):
    """Also a real concurrent train: the interrupted one holds the folder meanwhile."""
    log = _write_log(tmp_path / "log.csv")
    config_file = tmp_path / "c.yaml"
    config_file.write_text(_config(log, "training.epochs=500", "training.batch_size=8").to_yaml())
    run = RunDirectory(tmp_path / "run")
    process = subprocess.Popen(
        [sys.executable, "-m", "recsampled", "train", "--config", str(config_file),
         "--output", str(run.path)],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while run.latest_checkpoint() is None and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Meanwhile a second train into the same folder (another config) fails at once.
    other = load_config(overrides=["training.epochs=2"])
    with pytest.raises(FolderInUseError, match=f"process {process.pid} holds its lock"):
        train(other, run.path)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert lines[-1].startswith("recsampled train: interrupted. Kept: the checkpoint of step ")
    assert "run the same command again to resume from it" in lines[-1]
    # Messages once each: absl's basicConfig (at a checkpoint) no longer doubles them.
    assert not [line for line in lines if line.startswith("INFO:recsampled")], err
