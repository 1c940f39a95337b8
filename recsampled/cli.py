"""The ``recsampled`` command (also ``python -m recsampled``).

``recsampled train --config configs/NAME.yaml [--set section.key=value ...] --output RUN_DIR``
trains a two-tower retrieval model as the config says, checkpoints it, and writes the run
directory (``recsampled.training.outputs``); run again on the same RUN_DIR, it resumes. The
command only parses arguments and calls :func:`recsampled.training.train`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from recsampled.config import load_config
from recsampled.training import train

_TRAIN_HELP = """\
Train a two-tower retrieval model. The config is YAML with the sections data, model, task,
training and evaluation (see configs/default.yaml); --set overrides one key, its value read as
YAML (3, 0.5, true, null, [10, 20], text). Progress goes to stderr, the metrics table to stdout.
Running the command again with the same config and RUN_DIR resumes from the last checkpoint.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsampled", description="Sampled-softmax retrieval for recommenders."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_parser = commands.add_parser(
        "train", help="train, checkpoint and evaluate a model", description=_TRAIN_HELP
    )
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Exit status 0 on success, 2 for a usage error or a bad config, data or run directory (the
    message goes to stderr, without a traceback).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, overrides=args.overrides)
        result = train(config, args.output, force=args.force)
    except (ValueError, FileNotFoundError) as e:
        print(f"recsampled {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(result.table())
    print(f"Wrote {result.run_dir} in {result.seconds:.1f} s.")
    return 0
