"""recsampled tune: the search space's checks, trial configs, pruning, and a real kill + resume.

The trials train a tiny synthetic log (200 users, 300 items, 14 steps per epoch, at most 2
epochs). The resume test runs ``python -m recsampled tune`` as a subprocess, SIGKILLs it while
its second trial runs (polling the study's SQLite file), and runs it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from recsampled.config import Config, ConfigError, load_config
from recsampled.errors import RunError
from recsampled.runs.search_space import (
    NumSampledRange,
    StrChoice,
    TuneConfig,
    TuneSetup,
    load_tune_config,
    suggest_config,
)
from recsampled.runs.tune import STUDY_NAME, tune

ROOT = Path(__file__).resolve().parents[2]

TINY_TUNE = {
    "data": {
        "synthetic": {
            "num_users": 200, "num_items": 300, "num_interactions": 6000, "num_clusters": 5,
        },
        "split": {"validation": {"per_user": 1}},
    },
    "model": {"embedding_dim": 8, "normalize": True},
    "task": {"temperature": 0.1, "remove_accidental_hits": True, "logq": "counts"},
    "training": {
        "batch_size": 256, "optimizer": "adagrad", "learning_rate": 0.05,
        "checkpoint_every_steps": 0,
    },
    "evaluation": {"ks": [5, 10], "baselines": []},
    "tune": {
        "metric": "val_recall_at_10", "max_epochs": 2, "patience": 1, "random_trials": 2,
        "embedding_dim": {"choices": [8, 16]}, "num_sampled": {"low": 16, "high": 64, "log": True},
        "pruner": {"kind": "none"},
    },
}  # fmt: skip


def _write(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> TuneSetup:
    return load_tune_config(_write(tmp_path_factory.mktemp("cfg") / "tiny.yaml", TINY_TUNE))


# ---------------------------------------------------------------------------------------------
# The search space: parsing, round trips and errors naming tune.<param>.


def test_tune_config_round_trips_through_its_yaml(setup, tmp_path):
    again = load_tune_config(_write(tmp_path / "again.yaml", yaml.safe_load(setup.to_yaml())))
    assert again == setup
    assert Config.from_yaml(setup.config.to_yaml()) == setup.config
    assert TuneConfig.from_dict(setup.tune.to_dict()) == setup.tune
    assert setup.tune.embedding_dim.choices == (8, 16) and setup.tune.temperature.log


def test_default_search_space_and_the_shipped_example():
    tune_config = TuneConfig()
    assert set(tune_config.space()) == {
        "temperature", "learning_rate", "row_l2", "embedding_dim", "negatives", "num_sampled",
    }  # fmt: skip
    assert tune_config.metric == "val_recall_at_20" and tune_config.trials == 20
    shipped = load_tune_config(ROOT / "configs" / "tune.yaml")
    assert shipped.config.training.optimizer in ("lazy_adam", "adagrad", "sgd")
    assert TuneConfig.from_dict(shipped.tune.to_dict()) == shipped.tune


BASE = ["training.optimizer=adagrad"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tune.temperature.low=0"], "`tune.temperature.low` must be > 0 with log: true. "
                                     "Received: tune.temperature.low=0.0"),
        (["tune.temperature.log=false", "tune.temperature.low=0"], "`tune.temperature.low` must "
                                                                   "be > 0."),
        (["tune.learning_rate.high=0.0001"], "`tune.learning_rate.high` must be >= low (0.001)"),
        (["tune.row_l2.log=false", "tune.row_l2.low=-1"], "`tune.row_l2.low` must be >= 0"),
        (["tune.embedding_dim.choices=[]"], "`tune.embedding_dim.choices` must be a non-empty"),
        (["tune.embedding_dim.choices=[32, 0]"], "`tune.embedding_dim.choices[1]` must be > 0"),
        (["tune.embedding_dim.choices=[32, 32]"], "must be a list without repeats"),
        (["tune.negatives.choices=[in_batch, sampled]"], "`tune.negatives.choices[1]` must be "
                                                         "one of ['in_batch', 'mixed']"),
        (["tune.num_sampled.low=0"], "`tune.num_sampled.low` must be >= 1"),
        (["tune.temperature=0.1"], "`tune.temperature` must be a mapping of keys to values or "
                                   "null. Received: tune.temperature=0.1"),
        (["tune.tempreature.low=1"], "Unknown key `tune.tempreature` in section `tune`. "
                                     "Valid keys: trials,"),
        (["tune.temperature.lo=1"], "Did you mean `low`?"),
        (["tune.metric=val_recall_at_100"], "`tune.metric` must be one of ['val_recall_at_10',"),
        (["tune.pruner.kind=hyperband"], "`tune.pruner.kind` must be one of ['median', 'none']"),
        (["tune.pruner.kind=none", "tune.pruner.warmup_epochs=2"], "`tune.pruner.warmup_epochs`"
                                                                   " is not used with kind='none'"),
        (["tune.trials=0"], "`tune.trials` must be > 0"),
        (["training.optimizer=adam"], "`tune.row_l2` tunes training.row_l2, which needs a sparse "
                                      "optimiser"),
        (["tune.negatives.choices=[in_batch]"], "`tune.num_sampled` is used by trials with "
                                                "mixed negatives only"),
    ],
)  # fmt: skip
def test_a_wrong_search_space_entry_names_it_and_the_rule(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_tune_config(overrides=[*BASE, *overrides])
    assert message in str(info.value)


def test_a_tune_file_error_names_the_key(tmp_path):
    values = {**TINY_TUNE, "tune": {**TINY_TUNE["tune"], "negatives": {"choices": ["mixd"]}}}
    with pytest.raises(ConfigError, match=r"`tune.negatives.choices\[0\]` must be one of"):
        load_tune_config(_write(tmp_path / "bad.yaml", values))


# ---------------------------------------------------------------------------------------------
# One trial's config.


def _trial(seed: int = 0) -> optuna.Trial:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()


def test_suggest_config_sets_every_tuned_key_and_keeps_the_rest(setup):
    base = setup.config
    tune_config = TuneConfig(
        embedding_dim={"choices": [8, 16]}, negatives={"choices": ["mixed"]}, max_epochs=7,
        metric="val_ndcg_at_5", patience=2,
    )  # fmt: skip
    for seed in range(3):
        trial = _trial(seed)
        config = suggest_config(trial, base, tune_config, num_items=40)
        p = trial.params
        assert config.task.temperature == p["temperature"] and 0.02 <= p["temperature"] <= 0.5
        assert config.training.learning_rate == p["learning_rate"]
        assert config.training.row_l2 == p["row_l2"] and 0.001 <= p["row_l2"] <= 3.0
        assert config.model.embedding_dim == p["embedding_dim"] in (8, 16)
        assert config.task.negatives == "mixed" and config.task.remove_accidental_hits
        # num_sampled: [32, 1024] by default, capped at half of 40 items: 20
        assert config.task.num_sampled == p["num_sampled"] == 20
        assert config.training.epochs == 7
        assert config.training.early_stopping.to_dict() == {
            "monitor": "val_ndcg_at_5", "patience": 2, "mode": "max",
        }  # fmt: skip
        assert config.data == base.data and config.evaluation == base.evaluation
        assert config.training.optimizer == base.training.optimizer == "adagrad"


def test_suggest_config_in_batch_from_a_mixed_base_adds_validation():
    base = load_config(
        overrides=["task.negatives=mixed", "task.num_sampled=50", "task.sampler=unigram",
                   "task.distortion=0.5", "task.remove_accidental_hits=true"]
    )  # fmt: skip
    assert base.data.split.validation is None
    space = TuneConfig(
        negatives={"choices": ["in_batch"]}, num_sampled=None, row_l2=None, temperature=None,
        learning_rate=None, embedding_dim=None,
    )  # fmt: skip
    trial = _trial()
    config = suggest_config(trial, base, space, num_items=1000)
    assert trial.params == {"negatives": "in_batch"}
    assert config.task.negatives == "in_batch"
    assert (config.task.sampler, config.task.num_sampled, config.task.distortion) == (
        "log_uniform", 0, 1.0,
    )  # fmt: skip
    assert config.data.split.validation is not None  # per-user last-one-out by default
    assert config.task.temperature == base.task.temperature
    assert config.model == base.model


def test_int_range_cap_and_choice_rules():
    trial = _trial()
    assert NumSampledRange(low=8, high=8).suggest(trial, "s", cap=4) == 4
    with pytest.raises(ConfigError, match="must be one of"):
        type("Bad", (StrChoice,), {"ALLOWED": ("a",), "SECTION": "tune.x"})(choices=("b",))


# ---------------------------------------------------------------------------------------------
# Real trials.


def test_a_pruner_prunes_trials_after_their_first_epoch(setup, tmp_path):
    # Recall is at most 1, so ThresholdPruner(lower=1.1) prunes at the first report (epoch 1).
    pruner = optuna.pruners.ThresholdPruner(lower=1.1)
    with pytest.raises(RunError, match=r"No trial of the study .* completed"):
        tune(setup.config, tmp_path, tune=setup.tune, trials=1, pruner=pruner)
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path}/study.db")
    assert [t.state.name for t in study.trials] == ["PRUNED"]
    for trial in study.trials:
        assert list(trial.intermediate_values) == [1]  # pruned after epoch 1 of 2
        assert 0 <= trial.intermediate_values[1] <= 1
        # the trial's run stopped there: its last checkpoint is epoch 1's
        assert (tmp_path / trial.user_attrs["run_dir"] / "checkpoints").is_dir()
    assert not (tmp_path / "best").exists() and not (tmp_path / "result.json").exists()


def _states(db: Path) -> list[str]:
    """Each trial's state, ``RUNNING+params`` for a running one that has its parameters."""
    import sqlite3

    if not db.exists():
        return []
    query = (
        "SELECT t.state, COUNT(p.param_id) FROM trials t "
        "LEFT JOIN trial_params p ON p.trial_id = t.trial_id GROUP BY t.trial_id"
    )
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            rows = connection.execute(query).fetchall()
    except sqlite3.OperationalError:  # the tables are not created yet, or locked
        return []
    return [state + ("+params" if state == "RUNNING" and count else "") for state, count in rows]


def _tune_command(config: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "recsampled", "-q", "tune", "--config", str(config),
            "--trials", "2", "--set", "tune.max_epochs=1", "--output", str(output)]  # fmt: skip


def test_a_killed_tune_resumes_with_its_trials_kept(tmp_path):
    config, output = _write(tmp_path / "tiny.yaml", TINY_TUNE), tmp_path / "study"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    first = subprocess.Popen(_tune_command(config, output), cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        states = _states(output / "study.db")
        started = (output / "trials" / "0001" / "config.yaml").exists()  # all params suggested
        if "COMPLETE" in states and "RUNNING+params" in states and started:  # inside trial 1
            break
        time.sleep(0.2)
    else:
        first.kill()
        pytest.fail(f"no trial finished: rc {first.poll()}, {first.stderr.read().decode()[-2000:]}")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    first.stderr.close()
    storage = f"sqlite:///{output}/study.db"
    before = optuna.load_study(study_name=STUDY_NAME, storage=storage).trials
    done = [t for t in before if t.state.name == "COMPLETE"]
    killed = [t for t in before if t.state.name == "RUNNING"]
    assert len(done) >= 1 and len(killed) == 1

    second = subprocess.run(_tune_command(config, output), cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    after = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    trials = {t.number: t for t in after.trials}
    for t in done:  # kept as they were
        assert trials[t.number].state.name == "COMPLETE"
        assert (trials[t.number].value, trials[t.number].params) == (t.value, t.params)
    assert trials[killed[0].number].state.name == "FAIL"
    reruns = [t for t in after.trials if t.user_attrs.get("rerun_of") == killed[0].number]
    assert len(reruns) == 1 and reruns[0].params == killed[0].params
    finished = [t for t in after.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 2 and len(after.trials) == 3
    _check_outputs(output, after)


def _check_outputs(output: Path, study: optuna.Study) -> None:
    best = study.best_trial
    result = json.loads((output / "result.json").read_text())
    assert result["best_trial"] == best.number and result["best_params"] == best.params
    assert result["validation"]["val_recall_at_10"] == pytest.approx(best.value)
    assert set(result["test"]) >= {"recall@10", "ndcg@10", "num_users"}
    assert result["trials"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 1}
    # best.yaml is a plain training config: the best trial's, as its run saved it
    best_config = load_config(output / "best.yaml")
    trial_run = output / best.user_attrs["run_dir"]
    assert best_config == Config.from_yaml((trial_run / "config.yaml").read_text())
    assert best_config == Config.from_yaml((output / "best" / "config.yaml").read_text())
    metrics = json.loads((output / "best" / "metrics.json").read_text())
    assert metrics["model"]["recall@10"] == pytest.approx(result["test"]["recall@10"])
    for name in ("history.png", "importance.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_tune_config(output / "tune.yaml").tune.trials == 2


def test_a_study_of_another_config_or_a_held_lock_is_refused(setup, tmp_path):
    import dataclasses
    import fcntl

    from recsampled.errors import RunDirectoryError
    from recsampled.runs.tune import _check_setup, open_study

    open_study(tmp_path, setup.tune)  # creates study.db, no trial
    _check_setup(tmp_path, setup)
    _check_setup(tmp_path, setup._replace(tune=dataclasses.replace(setup.tune, trials=50)))
    # every trial sets training.epochs and the tuned keys: a base that differs there resumes
    training = dataclasses.replace(setup.config.training, epochs=9, row_l2=0.5)
    _check_setup(
        tmp_path, setup._replace(config=dataclasses.replace(setup.config, training=training))
    )
    training = dataclasses.replace(setup.config.training, batch_size=64)
    with pytest.raises(RunDirectoryError, match=r"training.batch_size: 256 != 64"):
        _check_setup(
            tmp_path, setup._replace(config=dataclasses.replace(setup.config, training=training))
        )
    other = setup._replace(tune=dataclasses.replace(setup.tune, seed=1))
    with pytest.raises(RunDirectoryError, match=r"another config.*tune.seed: 0 != 1"):
        tune(other.config, tmp_path, tune=other.tune)
    with open(tmp_path / "tune.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunDirectoryError, match="being tuned by another process"):
            tune(setup.config, tmp_path, tune=setup.tune)
