"""The demo (``make demo``): train ``configs/default.yaml`` into ``runs/demo`` and show the result.

Prints the data summary, one progress line per epoch and the full-catalogue metrics beside the
popularity baseline. A second run resumes from the last checkpoint in ``runs/demo`` (or, once
finished, only rewrites the outputs); ``--force`` starts over.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from recsampled.config import load_config  # noqa: E402
from recsampled.training import RunDirectoryError, TrainResult, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "default.yaml"
RUN_DIR = REPO / "runs" / "demo"


def main(argv: Sequence[str] | None = None) -> TrainResult:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__)
    parser.add_argument("--force", action="store_true", help="discard runs/demo and start over")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    config = load_config(CONFIG)
    print(f"Training {CONFIG.relative_to(REPO)} into {RUN_DIR.relative_to(REPO)}.", flush=True)
    try:
        result = train(config, RUN_DIR, force=args.force, stream=sys.stdout)
    except RunDirectoryError as e:
        sys.exit(f"{e}\n(For the demo: python -m pipelines.demo --force)")

    print(f"\nFull-catalogue metrics on the test split (training items removed):\n{result.table()}")
    k = max(result.metrics.ks)
    model, popularity = result.metrics.recall[k], result.popularity.recall[k]
    verdict = "beats" if model > popularity else "does NOT beat"
    print(f"\nThe model {verdict} popularity: Recall@{k} {model:.4f} vs {popularity:.4f}.")
    print(
        f"Done in {time.perf_counter() - started:.0f} s. {RUN_DIR.relative_to(REPO)} holds "
        "config.yaml, checkpoints/, vocabulary/, towers/, history.json and metrics.json."
    )
    return result


if __name__ == "__main__":
    main()
