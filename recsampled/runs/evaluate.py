"""Evaluating a run on its test split: exact search, through an artifact's index, baselines.

:func:`evaluate_run` scores Recall@K, NDCG@K, HitRate@K, MRR and coverage with
:func:`recsampled.evaluation.evaluate` (training items removed, the same seeded test users for
every column: the model, iALS (``evaluation.baselines``) and popularity), so that the exact
column reproduces the run's ``metrics.json`` (``recsampled evaluate``; tests:
``tests/test_cli_serving.py``, ``tests/runs/test_evaluate_baselines.py``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recsampled.errors import ArtifactError
from recsampled.evaluation import (
    RankingMetrics,
    embedding_scores,
    evaluate,
    retrieval_scores,
    sample_users,
    top_k,
)
from recsampled.index import Retriever
from recsampled.runs.build import evaluation_settings
from recsampled.runs.directory import TrainedRun, load_run

EVALUATION_SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RunEvaluation:
    """Full-catalogue metrics of a run on its test split, exact and through an index.

    Attributes:
        run_dir: the run directory.
        split: the split's method, e.g. ``"leave_last_out(num_test=1)"``.
        exact: the model by exact search (every item scored by ``Q·Cᵀ``).
        popularity: the popularity baseline (training counts).
        ials: the iALS baseline (``implicit``'s ALS on the training rows, ``evaluation.ials``),
            or None when ``evaluation.baselines`` leaves it out.
        index: the model through the artifact's index (``Retriever.recommend``), or None.
        artifact: the artifact folder, index factory, search parameters and the recall@10
            measured at export; None without an artifact.
    """

    run_dir: Path
    split: str
    exact: RankingMetrics
    popularity: RankingMetrics
    index: RankingMetrics | None = None
    artifact: dict[str, Any] | None = None
    ials: RankingMetrics | None = None

    def columns(self) -> dict[str, RankingMetrics]:
        """Column name -> metrics, in table order."""
        columns = {"exact": self.exact}
        if self.index is not None:
            columns["index"] = self.index
        if self.ials is not None:
            columns["ials"] = self.ials
        columns["popularity"] = self.popularity
        return columns

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: the protocol, the artifact and one flat metrics dict per column."""
        return {
            "schema_version": EVALUATION_SCHEMA_VERSION,
            "run_dir": str(self.run_dir),
            "protocol": "full catalogue, training items removed, mean over test users",
            "split": self.split,
            "num_users": self.exact.num_users,
            "num_items": self.exact.num_items,
            "artifact": self.artifact,
            "metrics": {name: m.as_dict() for name, m in self.columns().items()},
        }

    def table(self) -> str:
        """One row per metric, one column per scorer (exact, index, ials, popularity)."""
        columns = {name: m.as_dict() for name, m in self.columns().items()}
        keys = [k for k in columns["exact"] if k not in ("num_users", "num_items")]
        order = [k for p in ("recall", "ndcg", "hit_rate", "mrr", "coverage") for k in keys
                 if k.split("@")[0] == p]  # fmt: skip
        lines = [f"{'metric':<14}" + "".join(f"{name:>12}" for name in columns)]
        for key in order:
            lines.append(f"{key:<14}" + "".join(f"{c[key]:>12.4f}" for c in columns.values()))
        lines.append(
            f"({self.exact.num_users} test users, {self.exact.num_items} items, {self.split}; "
            "training items excluded)"
        )
        if self.artifact is not None:
            a = self.artifact
            params = ", ".join(f"{k}={v}" for k, v in a["search_params"].items()) or "exact"
            lines.append(
                f"index: {a['factory']} ({params}), recall@{a['recall_k']} vs exact "
                f"{a['recall']:.4f} measured at export; the served top {a['depth']} (seen items "
                f"excluded) holds {a['served_recall']:.4f} of the exact top {a['depth']}; its MRR "
                f"counts only those {a['depth']}."
            )
        return "\n".join(lines)


def evaluate_run(
    run: TrainedRun | str | os.PathLike,
    artifacts: str | os.PathLike | Retriever | None = None,
) -> RunEvaluation:
    """Evaluates a run on its test split: exact, through an artifact's index, and baselines.

    The cut-offs, batch size and user sample are the run's ``evaluation`` section, so the exact
    column reproduces the run's ``metrics.json``. Through the index, each user's top
    ``max(ks)`` unseen items come from ``Retriever.recommend`` (query tower, index, seen-item
    exclusion of the artifact), scored by :func:`recsampled.evaluation.retrieval_scores`.

    Args:
        run: a :class:`TrainedRun` or a run directory.
        artifacts: an artifact folder (or a loaded :class:`Retriever`) exported from this run.

    Returns:
        A :class:`RunEvaluation`.

    Raises:
        RunError: for a run that cannot be loaded.
        ArtifactError: for an artifact that cannot be loaded or does not belong to the run.
    """
    run = run if isinstance(run, TrainedRun) else load_run(run)
    split = run.split()
    settings = run.config.evaluation
    users = sample_users(split.test.user_ids, settings.max_users, settings.seed)
    queries = np.zeros((run.num_users, run.embedding_dim), np.float32)
    queries[users] = run.query_embeddings(users)
    items = run.item_embeddings()
    scorers = {"exact": embedding_scores(queries, items)}
    retriever = info = None
    if artifacts is not None:
        retriever = artifacts if isinstance(artifacts, Retriever) else Retriever.load(artifacts)
        check_artifact_matches(retriever, run)
        depth = min(max(settings.ks), run.num_items)
        retrieve = _served(retriever, depth)
        scorers["index"] = retrieval_scores(retrieve, run.num_items)
        info = _artifact_info(retriever, depth)
        info["served_recall"] = served_recall(
            run, retrieve, queries, items, users, depth, settings.batch_size
        )
    columns = evaluate(
        scorers, split.train, split.test, num_users=run.num_users, num_items=run.num_items,
        **evaluation_settings(settings),
    )  # fmt: skip
    return RunEvaluation(
        run_dir=run.path,
        split=split.report.method,
        exact=columns["exact"],
        popularity=columns["popularity"],
        index=columns.get("index"),
        artifact=info,
        ials=columns.get("ials"),
    )


def _served(retriever: Retriever, depth: int) -> Callable[[np.ndarray], tuple]:
    """``[batch]`` user indices -> ``(rows, scores)`` of their top ``depth`` unseen items, as
    the retriever serves them."""

    def retrieve(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top = retriever.recommend(retriever.user_ids[batch], k=depth, exclude_seen=True)
        return top.rows, top.scores

    return retrieve


def _artifact_info(retriever: Retriever, depth: int) -> dict[str, Any]:
    manifest = retriever.manifest
    return {
        "path": str(retriever.path),
        "factory": manifest.index.factory,
        "search_params": dict(manifest.index.search_params),
        "recall_k": manifest.recall.k,
        "recall": manifest.recall.value,
        "depth": depth,
    }


def served_recall(
    run: TrainedRun,
    retrieve: Any,
    queries: np.ndarray,
    items: np.ndarray,
    users: np.ndarray,
    depth: int,
    batch_size: int,
) -> float:
    """Mean ``|served ∩ exact| / depth`` of the top ``depth`` unseen items of ``users``: how
    close the lists the index serves (seen items excluded, as recommended) are to exact search.
    Lower than the recall@10 measured at export when users have seen many of their nearest
    items (the index must then find ``depth + seen`` neighbours)."""
    seen = run.seen()
    score = embedding_scores(queries, items)
    overlaps = []
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        scores = np.array(score(batch), np.float32)
        rows, columns = seen[batch].nonzero()
        scores[rows, columns] = -np.inf
        exact = top_k(scores, depth)
        served, _ = retrieve(batch)
        for want, got in zip(exact, served, strict=True):
            overlaps.append(np.intersect1d(want, got[got >= 0]).size / depth)
    return float(np.mean(overlaps))


def check_artifact_matches(retriever: Retriever, run: TrainedRun) -> None:
    """Raises :class:`ArtifactError` unless the artifact has the run's items, users and seen
    items (it was exported from this run)."""
    path = retriever.path

    def fail(part: str, message: str) -> ArtifactError:
        return ArtifactError(
            f"The artifact at {path} was not exported from the run at {run.path}: {message}",
            path=path,
            part=part,
        )

    if retriever.embedding_dim != run.embedding_dim:
        raise fail(
            "manifest.json",
            f"embedding_dim {retriever.embedding_dim} != the run's {run.embedding_dim}.",
        )
    for part, mine, theirs in (
        ("item_ids.npy", retriever.item_ids, run.items.original_ids),
        ("user_ids.npy", retriever.user_ids, run.users.original_ids),
    ):
        if mine is None:
            raise fail(part, f"it has no {part}.")
        if len(mine) != len(theirs) or not np.array_equal(
            np.asarray(mine).astype(str), np.asarray(theirs).astype(str)
        ):
            raise fail(part, f"{part} ({len(mine)} ids) differs from the run's vocabulary "
                       f"({len(theirs)} ids).")  # fmt: skip
    if retriever.user_items is None:
        raise fail("seen.npz", "it has no seen items, so they cannot be excluded.")
    mine, theirs = retriever.user_items, run.seen()
    if not (np.array_equal(mine.indptr, theirs.indptr) and mine.nnz == theirs.nnz):
        raise fail("seen.npz", "its seen items differ from the run's training items.")
