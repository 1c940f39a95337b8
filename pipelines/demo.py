"""The demo (``make demo``): the whole journey on the embedded default data, in about 3 minutes.

Train ``configs/default.yaml`` into ``runs/demo`` (``recsampled train``), export it with an HNSW
index tuned to recall@10 >= 0.95 into ``runs/demo-artifacts`` (``recsampled export``), evaluate
exact, through the index and popularity (``recsampled evaluate``), and recommend for a few test
users (``recsampled recommend``). A second run resumes from ``runs/demo``; ``--force`` starts over.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from pipelines import harness  # noqa: E402
from recsampled.config import load_config  # noqa: E402
from recsampled.index import Retriever  # noqa: E402
from recsampled.runs import (  # noqa: E402
    RunDirectoryError,
    RunEvaluation,
    evaluate_run,
    export_run,
    load_run,
    train,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "default.yaml"
RUN_DIR = REPO / "runs" / "demo"
# HNSW, tuned to recall@10 >= 0.95 (`--index auto` would build exact search at this size). Not
# IVF: with ~40 items per list and a few lists probed, users who have seen many of the probed
# items get fewer than k unseen ones back, and the served lists differ from exact search more
# than the recall@10 measured at export (top-10 without exclusion) says.
INDEX = "hnsw"
NUM_USERS_SHOWN = 3


def _show(path: Path) -> str:
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def main(argv: Sequence[str] | None = None) -> RunEvaluation:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__)
    parser.add_argument("--force", action="store_true", help="discard runs/demo and start over")
    parser.add_argument("--config", type=Path, default=CONFIG, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    harness.configure_logging()  # the library's progress lines (data, epochs, export) on stderr
    run_dir = args.run_dir
    artifacts = run_dir.with_name(f"{run_dir.name}-artifacts")
    started = time.perf_counter()

    def step(number: int, text: str) -> None:
        print(f"\n== {number}. {text} [{time.perf_counter() - started:.0f} s]", flush=True)

    step(1, f"Train {_show(args.config)} into {_show(run_dir)} (recsampled train)")
    config = load_config(args.config)
    try:
        result = train(config, run_dir, force=args.force)
    except RunDirectoryError as e:
        sys.exit(f"{e}\n(For the demo: python -m pipelines.demo --force)")
    print(f"\nFull-catalogue metrics on the test split (training items removed):\n{result.table()}")

    step(2, f"Export to {_show(artifacts)} (recsampled export --index {INDEX})")
    run = load_run(run_dir)
    info = export_run(run, artifacts, index=INDEX, overwrite=True)
    m = info.manifest
    params = ", ".join(f"{k}={v}" for k, v in m.index.search_params.items())
    print(
        f"{m.num_items} items x {m.embedding_dim} ({m.metric}) in {m.index.factory} ({params}): "
        f"recall@{m.recall.k} {m.recall.value:.4f} against exact search on "
        f"{m.recall.num_queries} users (target {m.recall.target}); "
        f"{len(m.files)} parts + manifest.json, {m.index.size_bytes / 2**10:.0f} KiB index."
    )

    step(3, "Evaluate on the test split: exact, through the index, popularity")
    retriever = Retriever.load(artifacts)
    evaluation = evaluate_run(run, retriever)
    print(evaluation.table())
    k = max(evaluation.exact.ks)
    model, index, popularity = (e.recall[k] for e in (evaluation.exact, evaluation.index,
                                                       evaluation.popularity))  # fmt: skip
    verdict = "beats" if min(model, index) > popularity else "does NOT beat"
    print(
        f"\nThe model {verdict} popularity: Recall@{k} {model:.4f} exact, {index:.4f} through "
        f"the index, vs {popularity:.4f}."
    )

    step(4, f"Recommend for {NUM_USERS_SHOWN} test users (recsampled recommend -k 5)")
    test = run.split().test
    users = np.unique(test.user_ids)[:NUM_USERS_SHOWN]
    user_ids = run.users.original_ids[users]
    top = retriever.recommend(user_ids, k=10)
    for row, (user, user_id) in enumerate(zip(users, user_ids, strict=True)):
        held_out = run.items.original_ids[test.item_ids[test.user_ids == user]].tolist()
        ranks = [int(r) + 1 for r in np.flatnonzero(np.isin(top.ids[row], held_out))]
        found = f"at rank {ranks[0]} of 10" if ranks else "not in the top 10"
        pairs = zip(top.ids[row, :5].tolist(), top.scores[row, :5], strict=True)
        items = ", ".join(f"{item} ({score:.3f})" for item, score in pairs)
        print(f"user {user_id}: {items}  | held-out item {held_out}: {found}")
    print(
        f"\nDone in {time.perf_counter() - started:.0f} s. {_show(run_dir)} holds the run "
        f"(config, checkpoints, vocabularies, towers, metrics); {_show(artifacts)} the artifact. "
        f"Try: .venv/bin/recsampled recommend --artifacts {_show(artifacts)} --user "
        f"{user_ids[0]}"
    )
    return evaluation


if __name__ == "__main__":
    main()
