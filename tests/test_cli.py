"""The ``recsampled`` command: parsing, error reporting, --set, --force.

The command itself runs in a subprocess (``python -m recsampled``) and is killed with SIGKILL in
``tests/runs/test_resume.py``; here it runs in-process to keep the suite fast.
"""

from __future__ import annotations

import json

import pytest

from recsampled import cli
from recsampled.config import Config
from tests.runs.conftest import TINY


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(Config.from_dict(TINY).to_yaml())
    return path


@pytest.mark.parametrize(
    "argv",
    [[], ["train"], ["train", "--config", "x.yaml"], ["export", "--output", "x"]],
    ids=["no command", "no output", "no output with config", "export without run"],
)
def test_usage_errors_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "usage: recsampled" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--set", "training.epoch=3"], "Unknown key `training.epoch` in section `training`"),
        (["--set", "training.epochs=many"], "`training.epochs` must be an integer"),
        (["--set", "epochs"], "must look like `section.key=value`"),
        (["--config", "missing.yaml"], "Config file not found: missing.yaml"),
        (["--set", "data.source=file", "--set", "data.path=missing.csv"],
         "Interaction log not found: missing.csv"),
    ],
)  # fmt: skip
def test_bad_config_or_data_is_one_line_on_stderr(arguments, message, tmp_path, capsys):
    status = cli.main(["train", *arguments, "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("recsampled train: error: ") and message in err
    assert "Traceback" not in err


def test_set_overrides_the_file_and_force_starts_over(tiny_yaml, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--config", str(tiny_yaml), "--output", str(run)]
    assert cli.main([*base, "--set", "training.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "recall@5" in out and "popularity" in out and f"Wrote {run}" in out

    # More epochs continue a finished run (issue 17); any other change needs --force.
    changed = ["--set", "training.epochs=2", "--set", "training.learning_rate=0.02"]
    assert cli.main([*base, *changed]) == 2
    err = capsys.readouterr().err
    assert "holds a checkpoint of a different config" in err
    assert "training.learning_rate: 0.01 != 0.02" in err

    (run / "evaluation.json").write_text("{}")  # what `recsampled evaluate` left of the old run
    assert cli.main([*base, *changed, "--force"]) == 0
    assert not (run / "evaluation.json").exists()
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert TINY["training"]["batch_size"] == 128  # the file's value, not the default 256
    assert "batch_size: 128" in (run / "config.yaml").read_text()


@pytest.mark.parametrize(
    "argv, verbosity",
    [
        (["train", "--output", "x"], 0),
        (["-q", "train", "--output", "x"], -1),
        (["train", "-q", "--output", "x"], -1),
        (["-v", "train", "-v", "--output", "x"], 1),
        (["train", "-vv", "--output", "x"], 2),
    ],
)
def test_verbosity_flags_before_or_after_the_command(argv, verbosity):
    args = cli._parser().parse_args(argv)
    assert cli._verbosity(args) == verbosity


def test_index_choices_match_the_library():
    from recsampled.index.build import INDEX_CHOICES

    assert cli.INDEX_CHOICES == INDEX_CHOICES


def test_serve_is_a_subcommand_with_the_serving_options():
    args = cli._parser().parse_args(["serve", "--artifacts", "a", "--port", "9000", "-q"])
    assert args.command == "serve" and args.port == 9000 and args.quiet


# Issue 16: one line, phrased for the command line, never a traceback.


def test_library_hints_are_phrased_as_set_keys(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text("user,item\n" + "".join(f"u{u},i{i}\n" for u in range(5) for i in range(4)))
    overrides = ["data.source=file", f"data.path={log}", "data.split.kind=time_cut"]
    argv = [part for override in overrides for part in ("--set", override)]
    status = cli.main(["train", *argv, "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "set `data.timestamp_col` (--set data.timestamp_col=...)" in err
    assert "read_interactions" not in err
    assert cli._as_set_keys("pass delimiter=';', or pass on_bad_rows='skip'; pass x=1") == (
        "pass --set 'data.delimiter=;', or pass --set data.on_bad_rows=skip; pass x=1"
    )


@pytest.mark.parametrize(
    "command, hint", [("train", "(Here: --force.)"), ("export", "(Here: --overwrite.)")]
)
def test_an_existing_output_names_the_commands_own_option(command, hint, monkeypatch, capsys):
    def exists(args):
        raise FileExistsError("`output_dir` already exists.")

    monkeypatch.setitem(cli._COMMANDS, command, exists)
    argv = {
        "train": ["train", "--output", "x"],
        "export": ["export", "--run", "r", "--output", "x"],
    }
    assert cli.main(argv[command]) == 2
    err = capsys.readouterr().err
    assert err == f"recsampled {command}: error: `output_dir` already exists. {hint}\n"


@pytest.mark.parametrize(
    "raised, status, line",
    [
        (KeyboardInterrupt(), 130, "recsampled export: interrupted. No artifact was written to x "
                                   "(exports are atomic); run the same command again."),
        (OSError(28, "No space left on device", "x/index.faiss"), 1,
         "recsampled export: error: the disk is full (x/index.faiss). No artifact was written"),
        (MemoryError("Unable to allocate 7.28 TiB for an array"), 1,
         "recsampled export: error: out of memory (Unable to allocate 7.28 TiB for an array). "
         "No artifact"),
    ],
    ids=["ctrl-c", "disk full", "out of memory"],
)  # fmt: skip
def test_ctrl_c_and_a_full_disk_are_one_line(raised, status, line, monkeypatch, capsys):
    def fail(args):
        raise raised

    monkeypatch.setitem(cli._COMMANDS, "export", fail)
    assert cli.main(["export", "--run", "r", "--output", "x"]) == status
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1


def test_a_device_as_config_is_not_a_regular_file(tmp_path, capsys):
    assert cli.main(["train", "--config", "/dev/null", "--output", str(tmp_path / "run")]) == 2
    assert "error: /dev/null: not a regular file" in capsys.readouterr().err
