"""Train from a config: the ``recsampled train`` command as a recipe.

    python -m pipelines.train --config configs/movielens-100k.yaml --output runs/ml100k \\
        [--set training.epochs=5 ...] [--force]

It parses nothing itself: ``recsampled.cli`` reads the arguments, ``recsampled.training.train``
does the run (load, split, fit with checkpoints, export the towers, evaluate).
"""

from __future__ import annotations

import sys

from recsampled import cli

if __name__ == "__main__":
    raise SystemExit(cli.main(["train", *sys.argv[1:]]))
