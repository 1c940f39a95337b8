"""The typed config: round trips, defaults equal to constructor defaults, strict validation."""

from __future__ import annotations

import dataclasses
import inspect
import time
from pathlib import Path

import pytest

from recsampled import config as config_module
from recsampled.config import (
    LOGQ,
    NEGATIVES,
    SPLITS,
    Config,
    ConfigError,
    DataConfig,
    EstimatorConfig,
    EvaluationConfig,
    ModelConfig,
    SplitConfig,
    SyntheticConfig,
    TaskConfig,
    TrainingConfig,
    apply_override,
    load_config,
)
from recsampled.data import read_interactions
from recsampled.data.synthetic import generate
from recsampled.models import Tower
from recsampled.samplers.frequency import FrequencyEstimator
from recsampled.tasks import Retrieval

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _defaults(function, names=None) -> dict:
    parameters = inspect.signature(function).parameters
    return {
        name: p.default
        for name, p in parameters.items()
        if p.default is not inspect.Parameter.empty and (names is None or name in names)
    }


@pytest.mark.parametrize(
    "section, function, exclude",
    [
        (SyntheticConfig, generate, ()),
        (EstimatorConfig, FrequencyEstimator.__init__, ("name",)),
        (ModelConfig, Tower.__init__, ("categorical_features", "numeric_features", "feature_dim",
                                       "name", "embedding_dim", "normalize")),
    ],
)  # fmt: skip
def test_defaults_equal_constructor_defaults(section, function, exclude):
    expected = {k: v for k, v in _defaults(function).items() if k not in exclude}
    actual = {k: v for k, v in dataclasses.asdict(section()).items() if k in expected}
    assert actual == {k: tuple(v) if isinstance(v, list) else v for k, v in expected.items()}


def test_defaults_of_the_other_sections():
    task = dataclasses.asdict(TaskConfig())
    tuned = ("sampler", "temperature", "remove_accidental_hits")  # the config's own defaults
    for name, default in _defaults(Retrieval.__init__).items():
        if name in task and name not in tuned:  # (sampler: a name here, an instance there)
            assert task[name] == default, name
    assert NEGATIVES[TaskConfig().negatives] == (True, False)  # Retrieval(in_batch_negatives=True)
    data = dataclasses.asdict(DataConfig())
    for name, default in _defaults(read_interactions).items():
        assert data[name] == default, name
    split = SplitConfig()
    assert split.num_test == _defaults(SPLITS["leave_last_out"])["num_test"]
    assert split.test_fraction == _defaults(SPLITS["random_holdout"])["test_fraction"]
    assert split.seed == _defaults(SPLITS["random_holdout"])["seed"]


def test_defaults_are_the_variant_the_study_chose():
    """A config naming only its data trains L2-normalised D=64 towers with in-batch negatives,
    logQ from counts, τ = 0.2, Adagrad (sparse) at 0.1 with row L2 1.0, B=1024, 10 epochs
    (benchmarks/defaults.json; the issue-17 recipe's shape)."""
    config = Config.from_dict({"data": {"source": "file", "path": "log.csv"}})
    assert (config.model.embedding_dim, config.model.normalize) == (64, True)
    task = config.task
    assert (task.negatives, task.logq, task.temperature) == ("in_batch", "counts", 0.2)
    assert task.remove_accidental_hits and LOGQ[task.logq] is not None
    training = config.training
    assert (training.optimizer, training.learning_rate, training.row_l2) == ("adagrad", 0.1, 1.0)
    assert training.optimizer in config_module.SPARSE_OPTIMIZERS
    assert (training.batch_size, training.epochs) == (1024, 10)
    # The resolved defaults follow the other choices: no logQ without in-batch negatives, no
    # row L2 with the dense Adam; given values are kept.
    sampled = TaskConfig(negatives="sampled", num_sampled=8)
    assert sampled.logq == "none" and TaskConfig(logq="streaming").logq == "streaming"
    assert TrainingConfig(optimizer="adam").row_l2 == 0.0
    assert TrainingConfig(optimizer="lazy_adam").row_l2 == config_module.DEFAULT_ROW_L2
    assert TrainingConfig(row_l2=0.0).row_l2 == 0.0
    assert Config.from_yaml(config.to_yaml()) == config


def test_round_trip_through_yaml():
    config = Config(
        data=DataConfig(
            source="file", path="ratings.csv", column_names=("u", "i"), min_rating=4,
            split=SplitConfig(kind="time_cut", cutoff=1.5e9),
        ),
        model=ModelConfig(hidden_units=(64, 32), normalize=True),
        task=TaskConfig(negatives="mixed", num_sampled=64, sampler="unigram", distortion=0.75,
                        logq="streaming", estimator=EstimatorConfig(num_buckets=1024),
                        remove_accidental_hits=True, temperature=0.05),
        evaluation=EvaluationConfig(ks=(5,), max_users=100, seed=3),
    )  # fmt: skip
    text = config.to_yaml()
    assert Config.from_yaml(text) == config
    assert Config.from_dict(config.to_dict()) == config
    assert Config.from_yaml(Config().to_yaml()) == Config()
    assert config.data.min_rating == 4.0 and isinstance(config.data.min_rating, float)


# configs/tune.yaml is a tune config (a training config plus tune:): tests/runs/test_tune.py.
@pytest.mark.parametrize(
    "path", sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "tune.yaml"), ids=lambda p: p.name
)
def test_shipped_configs_load_and_round_trip(path):
    config = load_config(path)
    assert Config.from_yaml(config.to_yaml()) == config


def test_overrides_parse_yaml_scalars_and_apply_in_order():
    config = load_config(
        CONFIGS / "default.yaml",
        overrides=[
            "training.epochs=3",
            "training.learning_rate=0.5",
            "task.temperature=null",
            "evaluation.ks=[1, 2]",
            "data.synthetic.num_items=500",
            "training.epochs=4",
        ],
    )
    assert config.training.epochs == 4
    assert config.training.learning_rate == 0.5
    assert config.task.temperature is None
    assert config.evaluation.ks == (1, 2)
    assert config.data.synthetic.num_items == 500


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epoch=3", "Unknown key `training.epoch` in section `training`. Valid keys: "
                             "batch_size, epochs,"),
        ("trainin.epochs=3", "Unknown key `trainin` in the config (its sections). Valid keys: "
                             "data, model, task, training, evaluation. Did you mean `training`?"),
        ("data.split.kinds=files", "Valid keys: kind, num_test, test_fraction, seed, cutoff, "
                                   "test_path, validation. Did you mean `kind`?"),
        ("training.epochs.value=3", "`training.epochs` is a setting, not a section"),
        ("training.epochs", "must look like `section.key=value`"),
        ("=3", "must look like `section.key=value`"),
    ],
)  # fmt: skip
def test_unknown_keys_list_the_valid_ones(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert message in str(error.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epochs=three", "`training.epochs` must be an integer. Received: "
                                  "training.epochs='three' (of type str)."),
        ("training.epochs=2.5", "`training.epochs` must be an integer."),
        ("training.epochs=true", "`training.epochs` must be an integer."),
        ("training.shuffle=1", "`training.shuffle` must be a bool."),
        ("training.learning_rate=1e-3", "Write it with a dot, e.g. 0.001"),
        ("task.temperature=hot", "`task.temperature` must be a number or null."),
        ("evaluation.ks=10", "`evaluation.ks` must be a list of integers."),
        ("evaluation.ks=[10, x]", "`evaluation.ks[1]` must be an integer."),
        ("model=3", "`model` must be a mapping of keys to values."),
        ("data.split=[1]", "`data.split` must be a mapping of keys to values."),
        ("data.user_col=5", "`data.user_col` must be a string or null."),
    ],
)  # fmt: skip
def test_wrong_types_name_section_and_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["training.epochs=0"], "`training.epochs` must be > 0."),
        (["training.steps_per_epoch=0"], "`training.steps_per_epoch` must be > 0."),
        (["training.checkpoint_every_steps=-1"], "`training.checkpoint_every_steps` must be >= 0"),
        (["task.sampler=zipf"], "`task.sampler` must be one of ['log_uniform', 'uniform', "
                                "'unigram']"),
        (["task.negatives=all"], "`task.negatives` must be one of ['in_batch', 'mixed', "
                                 "'sampled']"),
        (["data.split.kind=kfold"], "`data.split.kind` must be one of ['leave_last_out', "
                                    "'random_holdout', 'time_cut', 'files']"),
        (["data.format=xlsx"], "`data.format` must be one of"),
        (["task.estimator.num_buckets=1000", "task.logq=streaming",
          "task.remove_accidental_hits=true"],
         "`task.estimator.num_buckets` must be a power of two"),
        (["data.synthetic.cluster_affinity=2.0"], "must be in [0, 1]"),
        (["evaluation.ks=[]"], "`evaluation.ks` must be a non-empty list"),
        # Settings that the other settings make irrelevant are errors, not silently ignored.
        (["task.num_sampled=8"], "`task.num_sampled` is not used without catalogue negatives"),
        (["task.logq=none", "task.estimator.alpha=0.1"],
         "`task.estimator` is not used with logq='none'"),
        (["data.split.seed=1"], "`data.split.seed` is not used by kind='leave_last_out'"),
        (["data.path=x.csv"], "`data.path` is not used with source='synthetic'"),
        (["data.source=file"], "`data.path` must be the interaction log for source='file'"),
        (["evaluation.seed=1"], "`evaluation.seed` is not used without max_users"),
        (["task.negatives=mixed", "task.remove_accidental_hits=true"],
         "`task.num_sampled` must be > 0"),
        (["task.remove_accidental_hits=false"], "`task.remove_accidental_hits` must be true"),
        (["task.negatives=sampled", "task.num_sampled=4", "task.logq=counts",
          "task.remove_accidental_hits=true"], "`task.logq` corrects in-batch negatives"),
        (["data.split.kind=time_cut", "data.split.cutoff=5", "data.split.test_fraction=0.5"],
         "Give one of `data.split.cutoff` and `data.split.test_fraction`"),
        (["data.split.kind=files", "data.split.test_path=t.csv"],
         "cannot be 'files' with source='synthetic'"),
    ],
)  # fmt: skip
def test_bad_values_and_combinations(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=overrides)
    assert message in str(error.value)


def test_keyword_construction_is_validated_the_same_way():
    with pytest.raises(ConfigError, match="`training.batch_size` must be an integer"):
        TrainingConfig(batch_size="256")
    with pytest.raises(ConfigError, match="Unknown key `model.dim` in section `model`"):
        Config.from_dict({"model": {"dim": 3}})
    assert Config(model={"embedding_dim": 4}).model == ModelConfig(embedding_dim=4)


def test_yaml_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="Config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="a config must be a mapping of sections"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == Config()
    # An override can complete a file that is incomplete on its own.
    partial = tmp_path / "file.yaml"
    partial.write_text("data:\n  source: file\n")
    assert load_config(partial, overrides=["data.path=log.csv"]).data.path == "log.csv"


def test_apply_override_creates_missing_sections():
    values: dict = {"data": None}
    apply_override(values, "data.split.kind=random_holdout")
    assert values == {"data": {"split": {"kind": "random_holdout"}}}


def test_diff_lists_the_keys_that_differ():
    a = Config()
    b = load_config(overrides=["training.epochs=5", "data.synthetic.seed=3"])
    assert a.diff(b) == ["data.synthetic.seed: 0 != 3", "training.epochs: 10 != 5"]
    assert a.diff(a) == []


# Issue 16: configs as careless and hostile users write them.


def test_a_duplicated_key_names_the_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("training:\n  epochs: 2\n  batch_size: 8\n  epochs: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"{path}, line 4: the key `epochs` is given twice in one mapping (first on line 2); "
        "YAML would keep only the last value. Remove one."
    )
    path.write_text("base: &b {epochs: 2}\ntraining:\n  <<: *b\n  epochs: 3\n")  # a merge key
    with pytest.raises(ConfigError, match="Unknown key `base`"):  # overriding a merge is fine
        load_config(path)


def test_an_alias_bomb_is_refused_cheaply(tmp_path):
    lines = ['x0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 12)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\ntraining: {seed: *a11}\n")  # 9^12 values expanded
    started = time.process_time()
    with pytest.raises(ConfigError, match="expands to more than 100000 values through YAML"):
        load_config(path)
    assert time.process_time() - started < 1.0
    path.write_text("training: &a {seed: *a}\n")
    with pytest.raises(ConfigError, match="a recursive YAML alias"):
        load_config(path)
    with pytest.raises(ConfigError, match="expands to more than .* \\(from --set evaluation.ks="):
        load_config(overrides=["evaluation.ks=[" + ", ".join(["1"] * 100_001) + "]"])


def test_a_file_that_is_not_a_config_is_named_and_never_quoted(tmp_path):
    with pytest.raises(ConfigError, match="^/dev/null: not a regular file"):
        load_config("/dev/null")
    with pytest.raises(ConfigError, match="a folder, not a config file"):
        load_config(tmp_path)
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(ConfigError, match=f"^{binary}: not UTF-8 text \\(byte 0: invalid"):
        load_config(binary)
    secret = "$6$rounds=5000$Xy1s3cr3tSALT$hashHASHhash"
    shadow = tmp_path / "shadow"
    for text in (f"root:{secret}:19000:0:99999:7:::\nuser: [\n", f"{secret}: x: y\n",
                 f"- {secret}\n"):  # fmt: skip
        shadow.write_text(text)
        with pytest.raises(ConfigError) as error:
            load_config(shadow)
        assert secret not in str(error.value) and "s3cr3t" not in str(error.value)
        assert str(shadow) in str(error.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.learning_rate=.inf", "`training.learning_rate` must be a finite number. "
                                        "Received: training.learning_rate=inf"),
        ("task.temperature=.nan", "`task.temperature` must be a finite number."),
        ("training.learning_rate=1e-30", "Write it with a dot, e.g. 1.0e-30, for YAML"),
        ("training.learning_rate=2E5", "Write it with a dot, e.g. 200000.0, for YAML"),
        ("training.seed=-1", "`training.seed` must be an integer in [0, 2147483647] (a seed)."),
        ("data.synthetic.seed=4294967296", "`data.synthetic.seed` must be an integer in [0, "),
        ("training.epochs=100000000000000000000", "`training.epochs` must be an integer within "
                                                  "int64"),
    ],
)  # fmt: skip
def test_values_no_run_could_use_are_refused_at_config_time(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert message in str(error.value)
    assert str(error.value).endswith(f"(from --set {override})")


def test_the_dot_hint_spells_a_number_yaml_reads():
    import yaml

    from recsampled.config import _yaml_number

    for text in ("1e-30", "1e-3", "2E5", "-3e+7", "5e0"):
        assert yaml.safe_load(_yaml_number(text)) == float(text), text
    assert _yaml_number("ten") is None


def test_a_setting_a_later_set_makes_irrelevant_is_ignored_with_a_notice(tmp_path, caplog):
    path = tmp_path / "mixed.yaml"
    path.write_text(
        "task:\n  negatives: mixed\n  num_sampled: 100\n  sampler: unigram\n  distortion: 0.5\n"
        "  remove_accidental_hits: true\n"
    )
    caplog.set_level("WARNING", logger="recsampled.config")
    config = load_config(path, overrides=["task.negatives=in_batch"])
    assert config.task == TaskConfig(remove_accidental_hits=True)
    assert f"Ignoring task.num_sampled=100 (from {path}): --set task.negatives=in_batch" in (
        caplog.text
    )
    assert "task.sampler='unigram'" in caplog.text and "task.distortion=0.5" in caplog.text
    # Set after (or without) the switch, the setting is meant: still an error.
    with pytest.raises(ConfigError, match="(from --set task.num_sampled=4)"):
        load_config(path, overrides=["task.negatives=in_batch", "task.num_sampled=4"])
    with pytest.raises(ConfigError, match="`task.num_sampled` is not used"):
        load_config(overrides=["task.num_sampled=8"])
    switched = load_config(
        overrides=["data.split.kind=random_holdout", "data.split.seed=3",
                   "data.split.kind=leave_last_out"]
    )  # fmt: skip
    assert switched.data.split == SplitConfig()
