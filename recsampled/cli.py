"""The ``recsampled`` command (also ``python -m recsampled``).

- ``recsampled train --config configs/NAME.yaml [--set section.key=value ...] --output RUN_DIR``
  trains a two-tower retrieval model as the config says, checkpoints it, and writes the run
  directory (``recsampled.runs.directory``); run again on the same RUN_DIR, it resumes.
- ``recsampled tune --config FILE.yaml [--trials N] --output DIR`` runs (or resumes) an Optuna
  study over the config's ``tune:`` search space, trains the best config and reports its test
  metrics once (:func:`recsampled.runs.tune.tune`).
- ``recsampled export --run RUN_DIR --output ARTIFACT_DIR [--index flat|hnsw|ivf|ivfpq|auto]
  [--shards N]`` embeds the catalogue with the run's candidate tower, builds and tunes the FAISS
  index (split into N shards searched together) and writes the artifact folder atomically
  (:func:`recsampled.runs.export_run`).
- ``recsampled recommend --artifacts DIR --user U [-k 10] [--json]`` prints a user's top-k
  (:class:`recsampled.index.Retriever`), with titles when the run configured
  ``data.item_metadata``; ``--all-users --output recs.parquet`` (or ``.csv``) writes every
  user's top-k in chunks (:func:`recsampled.index.batch.write_recommendations`).
- ``recsampled serve --artifacts DIR [--port 8080]`` serves an artifact over HTTP
  (:mod:`recsampled.serving.cli`; needs the ``serve`` extra).
- ``recsampled evaluate --run RUN_DIR [--artifacts DIR]`` prints Recall@K, NDCG@K, HitRate@K,
  MRR and coverage on the test split, exact, through the index and for popularity, and writes
  them as JSON (:func:`recsampled.runs.evaluate_run`).

The command only parses arguments, calls the library and prints. Errors (a bad config, run
directory, artifact or user: a :class:`~recsampled.errors.RecsampledError`; a missing file)
exit with status 2 and one message on stderr naming the part at fault, without a traceback.

Messages and progress of the library go to stderr through the ``recsampled`` logger: ``-q``
shows warnings only, ``-v`` debug messages too. TensorFlow's C++ start-up lines (CUDA, cpu
features, oneDNN) are hidden unless ``--tf-log`` or ``RECSAMPLED_TF_LOG=1``. ``--help`` imports
neither TensorFlow nor FAISS: the subcommands import the library when they run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsampled._progress import configure_logging
from recsampled.errors import RecsampledError, UnknownUserError

#: ``recsampled.index.build.INDEX_CHOICES``, spelled out so that ``--help`` needs no FAISS.
INDEX_CHOICES = ("flat", "hnsw", "ivf", "ivfpq", "auto")
#: Set to 1 to see TensorFlow's C++ log lines (as ``--tf-log``).
TF_LOG_ENV = "RECSAMPLED_TF_LOG"

_TRAIN_HELP = """\
Train a two-tower retrieval model. The config is YAML with the sections data, model, task,
training and evaluation (see configs/default.yaml); --set overrides one key, its value read as
YAML (3, 0.5, true, null, [10, 20], text). Progress goes to stderr, the metrics table to stdout.
Running the command again with the same config and RUN_DIR resumes from the last checkpoint.
"""

_TUNE_HELP = """\
Tune a training config with Optuna: the config is a training config plus a tune: section (the
search space over temperature, learning rate, row L2, embedding dimension, negatives and
num_sampled; see configs/tune.yaml). Each trial trains into DIR/trials/NNNN, validates on
data.split.validation after every epoch (pruned when unpromising, stopped early), and is
compared on validation only. The study lives in DIR/study.db: run the command again to resume
after a kill. Then the best config is written to DIR/best.yaml, trained into DIR/best, and
evaluated on the test split once (DIR/result.json, history.png, importance.png).
"""

_EXPORT_HELP = """\
Export a trained run for serving: embed the whole catalogue with the candidate tower (progress
on stderr), build a FAISS index with the metric the model was trained with (cosine when the
towers normalise, else inner product), tune it until recall@10 against exact search reaches
--target-recall on up to 1000 of the run's users, and write ARTIFACT_DIR atomically (index,
or --shards N index files searched together; id maps; the query model in TF Serving's layout,
query_model/1/, mapping original user ids to embeddings; seen items, popularity, titles of
data.item_metadata, manifest.json). 'auto' is exact search below 100,000 items and a tuned IVF
index above.
"""

_RECOMMEND_HELP = """\
Print the top-k items for one or more users (original user ids), their training items
excluded, with titles when the run configured data.item_metadata. With --output FILE
(.parquet or .csv), write them instead (columns user_id, rank, item_id, score); --all-users
writes every user of the artifact, --chunk-size users at a time, with a progress bar.
"""

_EVALUATE_HELP = """\
Evaluate a run on its test split against the whole catalogue (training items excluded):
Recall@K, NDCG@K, HitRate@K, MRR and coverage@K for K in the run's evaluation.ks, by exact
search, through the index of --artifacts (an export of this run), and for popularity. Prints a
table (or the JSON with --json) and writes the JSON to --output (default RUN_DIR/evaluation.json).
"""


def _output_options(*, suppress: bool) -> argparse.ArgumentParser:
    """``-v``, ``-q`` and ``--tf-log``, accepted before and after the subcommand."""
    default = argparse.SUPPRESS if suppress else None
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS if suppress else 0,
        help="also show debug messages",
    )  # fmt: skip
    options.add_argument(
        "-q", "--quiet", action="store_true", default=default or False,
        help="show warnings and errors only (no progress)",
    )  # fmt: skip
    options.add_argument(
        "--tf-log", action="store_true", default=default or False,
        help=f"show TensorFlow's C++ log lines (also {TF_LOG_ENV}=1)",
    )  # fmt: skip
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsampled",
        description="Sampled-softmax retrieval for recommenders.",
        parents=[_output_options(suppress=False)],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_output_options(suppress=True)]
    for add in (_add_train, _add_tune, _add_export, _add_recommend, _add_evaluate, _add_serve):
        add(commands, common)
    return parser


Subparsers = Any  # argparse._SubParsersAction, private


def _add_train(commands: Subparsers, common: list[argparse.ArgumentParser]) -> None:
    train_parser = commands.add_parser(
        "train", help="train, checkpoint and evaluate a model", description=_TRAIN_HELP,
        parents=common,
    )  # fmt: skip
    train_parser.add_argument(
        "--config", type=Path, default=None, help="YAML config (default: every key at its default)"
    )
    train_parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key; repeatable, applied in order",
    )
    train_parser.add_argument(
        "--output", type=Path, required=True, metavar="RUN_DIR", help="the run directory"
    )
    train_parser.add_argument(
        "--force",
        action="store_true",
        help="discard an earlier run in RUN_DIR (checkpoints and outputs) and start over",
    )


def _add_tune(commands: Subparsers, common: list[argparse.ArgumentParser]) -> None:
    tune = commands.add_parser(
        "tune", help="search hyperparameters with Optuna, train the best config",
        description=_TUNE_HELP, parents=common,
    )  # fmt: skip
    tune.add_argument(
        "--config", type=Path, default=None,
        help="YAML training config with a tune: section (default: every key at its default)",
    )  # fmt: skip
    tune.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config key (tune.* too); repeatable, applied in order",
    )  # fmt: skip
    tune.add_argument(
        "--trials", type=int, default=None, metavar="N",
        help="finished trials to reach (default: tune.trials, 20)",
    )  # fmt: skip
    tune.add_argument("--output", type=Path, required=True, metavar="DIR", help="the tune folder")


def _add_export(commands: Subparsers, common: list[argparse.ArgumentParser]) -> None:
    export = commands.add_parser(
        "export", help="build the FAISS artifact of a trained run", description=_EXPORT_HELP,
        parents=common,
    )  # fmt: skip
    export.add_argument("--run", type=Path, required=True, metavar="RUN_DIR")
    export.add_argument("--output", type=Path, required=True, metavar="ARTIFACT_DIR")
    export.add_argument("--index", choices=INDEX_CHOICES, default="auto")
    export.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="recall@10 vs exact search the ANN index must reach (default 0.95)",
    )
    export.add_argument(
        "--shards",
        type=int,
        default=1,
        metavar="N",
        help="split the index into N shard files searched together (default 1: one index)",
    )
    export.add_argument(
        "--overwrite", action="store_true", help="replace an existing artifact at ARTIFACT_DIR"
    )
    export.add_argument(
        "--key-file", type=Path, default=None, metavar="FILE",
        help="sign the manifest (HMAC-SHA256, manifest.sig) with the key in FILE "
        "(default: $RECSAMPLED_ARTIFACT_KEY, if set)",
    )  # fmt: skip


def _add_recommend(commands: Subparsers, common: list[argparse.ArgumentParser]) -> None:
    recommend = commands.add_parser(
        "recommend", help="top-k items for users", description=_RECOMMEND_HELP, parents=common
    )
    recommend.add_argument("--artifacts", type=Path, required=True, metavar="DIR")
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", nargs="+", metavar="U", help="original user id(s)")
    who.add_argument(
        "--all-users", action="store_true", help="every user of the artifact (needs --output)"
    )
    recommend.add_argument(
        "--output", type=Path, default=None, metavar="FILE",
        help="write the recommendations to FILE (.parquet or .csv) instead of printing them",
    )  # fmt: skip
    recommend.add_argument(
        "--chunk-size", type=int, default=10_000, metavar="USERS",
        help="users per chunk with --output (bounds memory; default 10000)",
    )  # fmt: skip
    recommend.add_argument("-k", type=int, default=10, help="items per user (default 10)")
    recommend.add_argument("--json", action="store_true", help="print JSON instead of a table")
    recommend.add_argument(
        "--include-seen", action="store_true", help="keep the users' training items"
    )
    recommend.add_argument(
        "--popular-fallback",
        action="store_true",
        help="popular items for unknown users instead of an error",
    )
    recommend.add_argument(
        "--key-file", type=Path, default=None, metavar="FILE",
        help="verify the manifest's signature with the key in FILE before reading anything "
        "(default: $RECSAMPLED_ARTIFACT_KEY, if set)",
    )  # fmt: skip
    recommend.add_argument(
        "--trust-artifact", action="store_true",
        help="load the query model without checking that its graph holds only pure tensor ops "
        "(only for artifacts you trust: any op in it runs)",
    )  # fmt: skip


def _add_evaluate(commands: Subparsers, common: list[argparse.ArgumentParser]) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="test-split metrics, exact and through the index",
        description=_EVALUATE_HELP,
        parents=common,
    )
    evaluate.add_argument("--run", type=Path, required=True, metavar="RUN_DIR")
    evaluate.add_argument("--artifacts", type=Path, default=None, metavar="DIR")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument(
        "--output", type=Path, default=None, metavar="FILE", help="the JSON file to write"
    )


def _add_serve(commands: Subparsers, common: list[argparse.ArgumentParser]) -> None:
    from recsampled.serving.cli import SERVE_HELP, add_serve_arguments  # no FastAPI, no TF

    serve = commands.add_parser(
        "serve", help="HTTP service over an artifact", description=SERVE_HELP, parents=common
    )
    add_serve_arguments(serve)


def _train(args: argparse.Namespace) -> None:
    from recsampled.config import load_config
    from recsampled.runs import train

    config = load_config(args.config, overrides=args.overrides)
    result = train(config, args.output, force=args.force)
    print(result.table())
    print(f"Wrote {result.run_dir} in {result.seconds:.1f} s.")


def _tune(args: argparse.Namespace) -> None:
    import optuna

    from recsampled.runs.search_space import load_tune_config
    from recsampled.runs.tune import tune

    if args.trials is not None and args.trials <= 0:
        raise ValueError(f"--trials must be a positive integer. Received: --trials {args.trials}.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the recsampled logger reports trials
    setup = load_tune_config(args.config, overrides=args.overrides)
    result = tune(setup.config, args.output, tune=setup.tune, trials=args.trials)
    print(result.table())
    print(f"Wrote {result.output} in {result.seconds:.1f} s.")


def _export(args: argparse.Namespace) -> None:
    from recsampled.runs import export_run

    if args.key_file is not None:  # export_artifact signs with $RECSAMPLED_ARTIFACT_KEY
        from recsampled.index.integrity import KEY_ENV, read_key_file

        os.environb[KEY_ENV.encode()] = read_key_file(args.key_file)
    info = export_run(
        args.run,
        args.output,
        index=args.index,
        target_recall=args.target_recall,
        shards=args.shards,
        overwrite=args.overwrite,
    )
    m = info.manifest
    params = ", ".join(f"{k}={v}" for k, v in m.index.search_params.items()) or "exact"
    recall = f"recall@{m.recall.k} {m.recall.value:.4f} vs exact" + (
        f" on {m.recall.num_queries} users" if m.recall.num_queries else ""
    )
    print(
        f"Exported {m.num_items} items x {m.embedding_dim} ({m.metric}) and {m.num_users} users "
        f"to {info.path}: {m.index.factory} ({params}), {recall}"
        + ("" if m.recall.reached else f", BELOW the target {m.recall.target}")
        + (f", in {len(m.index.shards)} shards" if m.index.shards else "")
        + "."
    )


def _recommend(args: argparse.Namespace) -> None:
    from recsampled.index import Retriever

    if args.all_users and args.output is None:
        raise ValueError("--all-users writes a file: give --output FILE (.parquet or .csv).")
    if args.output is not None:
        from recsampled.index.batch import output_format

        output_format(args.output)  # a bad suffix fails before the artifact is loaded
    from recsampled.index.integrity import read_key_file

    retriever = Retriever.load(
        args.artifacts, unknown_user="popular" if args.popular_fallback else "error",
        key=read_key_file(args.key_file) if args.key_file is not None else None,
        trusted=args.trust_artifact,
    )  # fmt: skip
    users = None if args.all_users else retriever.parse_user_ids(args.user)
    if args.output is not None:
        _write_recommendations(args, retriever, users)
        return
    top = retriever.recommend(users, k=args.k, exclude_seen=not args.include_seen)
    frame = top.to_frame()
    if args.json:
        out = []
        for user, fallback in zip(top.queries.tolist(), top.fallback.tolist(), strict=True):
            rows = frame[frame["user"] == user].drop(columns=["user", "fallback"])
            out.append({"user": user, "fallback": fallback, "items": rows.to_dict("records")})
        print(json.dumps({"k": args.k, "recommendations": out}, indent=2, default=_json_value))
        return
    m = retriever.manifest
    for user, fallback in zip(top.queries.tolist(), top.fallback.tolist(), strict=True):
        rows = frame[frame["user"] == user]
        how = "popular items (unknown user)" if fallback else f"{m.index.factory}, {m.metric}"
        print(f"Top {args.k} for user {user} ({how}):")
        print(rows.drop(columns=["user", "fallback"]).to_string(index=False))


def _write_recommendations(args: argparse.Namespace, retriever: Any, users: Any) -> None:
    from recsampled.index.batch import write_recommendations

    rows = write_recommendations(
        retriever, args.output, k=args.k, user_ids=users, exclude_seen=not args.include_seen,
        chunk_size=args.chunk_size,
    )  # fmt: skip
    count = retriever.num_users if users is None else len(users)
    print(f"Wrote {rows} recommendations ({count} users, top {args.k}) to {args.output}.")


def _evaluate(args: argparse.Namespace) -> None:
    from recsampled._io import write_json
    from recsampled.runs import RunDirectory, evaluate_run

    result = evaluate_run(args.run, args.artifacts)
    data = result.as_dict()
    output = args.output or RunDirectory(result.run_dir).evaluation_file
    write_json(output, data)
    print(json.dumps(data, indent=2) if args.json else result.table())
    if not args.json:
        print(f"Wrote {output}.")


def _serve(args: argparse.Namespace) -> int:
    from recsampled.serving.cli import serve_main

    return serve_main(args)  # 0 on a clean shutdown, 2 on bad options or a broken artifact


def _json_value(value: object) -> object:
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


_COMMANDS = {
    "train": _train,
    "tune": _tune,
    "export": _export,
    "recommend": _recommend,
    "evaluate": _evaluate,
    "serve": _serve,
}


def _import_tensorflow(*, show_log: bool, initialize: bool = True) -> None:
    """Imports TensorFlow (and runs one op, which initialises the devices) with its C++ log
    lines hidden, unless ``show_log``: they are written to file descriptor 2 while importing,
    before any Python logging is set up, so they are hidden by pointing fd 2 at /dev/null.
    ``initialize=False`` (``train``) leaves the devices alone: a ``training.distribute``
    strategy must configure them (logical CPUs, collectives) before TensorFlow initialises."""
    if "tensorflow" in sys.modules:
        return
    from recsampled._keras_env import prefer_legacy_keras

    prefer_legacy_keras()
    if show_log:
        import tensorflow  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        import tensorflow as tf

        if initialize:
            tf.constant(0.0) + 1.0  # device initialisation (CUDA probing) logs here
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)


def _verbosity(args: argparse.Namespace) -> int:
    return -1 if getattr(args, "quiet", False) else int(getattr(args, "verbose", 0) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Exit status 0 on success, 2 for a usage error or a bad config, data, run directory,
    artifact or user (the message goes to stderr, without a traceback).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "k", 1) <= 0:
        parser.error(f"argument -k: must be a positive integer, got {args.k}")
    configure_logging(_verbosity(args))
    _root_handler()
    show_log = bool(getattr(args, "tf_log", False)) or os.environ.get(TF_LOG_ENV, "") == "1"
    command = f"recsampled {args.command}"
    try:
        # train (a distribute strategy) and serve (--tf-threads) configure TF before its first op
        _import_tensorflow(show_log=show_log, initialize=args.command not in ("train", "serve"))
        status = _COMMANDS[args.command](args)
    except KeyboardInterrupt:  # Ctrl-C: one line, what was kept, how to go on
        print(f"{command}: interrupted. {_kept(args)}", file=sys.stderr)
        return 130
    except RecsampledError as e:  # config, data, run, artifact, unknown ids
        where = f"[{e.part}] " if e.part else ""
        hint = " (Here: --popular-fallback.)" if isinstance(e, UnknownUserError) else ""
        print(f"{command}: error: {where}{_phrased(args, e)}{hint}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (disk full: OSError, or TensorFlow's own errors)
        if _out_of_memory(e):
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            print(f"{command}: error: out of memory ({first}). {_kept(args)}", file=sys.stderr)
            return 1
        if not _disk_full(e):
            if not isinstance(e, OSError | ValueError):
                raise
            # missing files, existing outputs, bad argument values
            hint = _EXISTS_HINTS.get(args.command, "") if isinstance(e, FileExistsError) else ""
            print(f"{command}: error: {_phrased(args, e)}{hint}", file=sys.stderr)
            return 2
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"{command}: error: the disk is full{where}. {_kept(args)}", file=sys.stderr)
        return 1
    return int(status or 0)


#: The option that replaces an existing output, per command (for FileExistsError).
_EXISTS_HINTS = {"train": " (Here: --force.)", "export": " (Here: --overwrite.)"}


def _disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the disk is full (``ENOSPC``, also inside TensorFlow's errors)."""
    import errno

    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return type(error).__module__.startswith("tensorflow") and "No space left" in str(error)


def _root_handler() -> None:
    """Gives the root logger a handler for others' warnings (TensorFlow's, absl's), unless it
    has one: absl's ``logging.log`` calls ``logging.basicConfig()`` on a root without handlers
    (at every checkpoint), after which every ``recsampled`` message was printed twice."""
    import logging

    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.addFilter(lambda record: not record.name.startswith("recsampled"))
    root.addHandler(handler)


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is running out of memory (NumPy's MemoryError, TensorFlow's OOM)."""
    return isinstance(error, MemoryError) or type(error).__name__ == "ResourceExhaustedError"


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted command leaves, and how to go on, in one sentence."""
    again = "run the same command again"
    if args.command == "train":
        try:
            import tensorflow as tf

            latest = tf.train.latest_checkpoint(str(Path(args.output) / "checkpoints"))
        except Exception:  # noqa: BLE001  (interrupted while importing TensorFlow)
            latest = None
        if latest is None:
            return f"No checkpoint was kept in {args.output}; {again} to start the run."
        step = latest.rsplit("-", 1)[-1]
        return f"Kept: the checkpoint of step {step} ({latest}); {again} to resume from it."
    if args.command == "export":
        return f"No artifact was written to {args.output} (exports are atomic); {again}."
    return f"Nothing was changed; {again}."


def _phrased(args: argparse.Namespace, error: BaseException) -> str:
    """The error's message, its hints as ``--set`` keys for the commands that take them."""
    return _as_set_keys(str(error)) if args.command in ("train", "tune") else str(error)


def _as_set_keys(message: str) -> str:
    """A library message's ``pass `name` to read_interactions`` / ``pass name='v'`` hints,
    phrased as the ``--set data.name=...`` the command line takes."""
    import re

    from recsampled.config import DataConfig

    keys = set(DataConfig.keys())

    def key_only(match: re.Match) -> str:
        name = match.group(1)
        return f"set `data.{name}` (--set data.{name}=...)" if name in keys else match.group(0)

    def key_value(match: re.Match) -> str:
        name, value = match.group(1), match.group(2).strip("'\"")
        if name not in keys:
            return match.group(0)
        setting = f"data.{name}={value}"
        return f"--set {setting}" if re.fullmatch(r"[\w.=/-]+", setting) else f"--set '{setting}'"

    message = re.sub(r"[Pp]ass `(\w+)`(?: to read_interactions)?", key_only, message)
    return re.sub(r"(?<=[Pp]ass )(\w+)=('[^']*'|\"[^\"]*\"|[\w.-]+)", key_value, message)
