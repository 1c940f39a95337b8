"""Baselines beside the model: implicit-feedback ALS (iALS) and popularity.

iALS (Hu, Koren & Volinsky, ICDM 2008, "Collaborative Filtering for Implicit Feedback
Datasets") factorises the binary user-item matrix ``P`` with confidences ``C = 1 + alpha·R``:

    min_{X, Y}  Σ_{u,i} c_ui (p_ui - x_uᵀ y_i)² + λ (Σ_u ||x_u||² + Σ_i ||y_i||²)

by alternating least squares; the score of item ``i`` for user ``u`` is ``x_uᵀ y_i``. Here it is
``implicit.cpu.als.AlternatingLeastSquares`` (benfred/implicit, the CPU solver with conjugate
gradient steps), fitted on the training rows only, each (user, item) pair once (``r_ui = 1``),
with BLAS held to one thread while it runs, as ``implicit`` recommends (its own threads do the
parallel work). Its scores go through :func:`recsampled.evaluation.ranking_metrics` like the
model's, so both columns are the same protocol: full catalogue, training items removed.

Example:
    >>> from recsampled.data import synthetic, random_holdout
    >>> log = synthetic.generate(num_users=60, num_items=40, num_interactions=900,
    ...                          seed=0).to_interactions()
    >>> split = random_holdout(log, test_fraction=0.2, seed=0)
    >>> score = ials_scores(split.train, factors=8, iterations=3)
    >>> score(np.array([0, 1])).shape
    (2, 40)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recsampled._validation import check_positive_int, received
from recsampled.evaluation.metrics import ScoreFunction, embedding_scores

if TYPE_CHECKING:
    from recsampled.data.interactions import Interactions

logger = logging.getLogger("recsampled.evaluation.baselines")

BASELINES = ("popularity", "ials")
"""Baselines that ``recsampled train`` and ``recsampled evaluate`` can show."""


@dataclass(frozen=True)
class IALSFactors:
    """A fitted iALS model: ``[num_users, factors]`` and ``[num_items, factors]`` float32."""

    user_factors: np.ndarray
    item_factors: np.ndarray
    seconds: float


def _check_number(name: str, value: object, *, positive: bool) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.floating | np.integer)
        or not np.isfinite(value)
        or (value <= 0 if positive else value < 0)
    ):
        rule = "> 0" if positive else ">= 0"
        raise ValueError(f"`{name}` must be a finite number {rule}. {received(name, value)}")
    return float(value)


def fit_ials(
    train: Interactions,
    *,
    num_users: int | None = None,
    factors: int = 64,
    regularization: float = 10.0,
    alpha: float = 1.0,
    iterations: int = 15,
    seed: int = 0,
    num_threads: int = 0,
) -> IALSFactors:
    """Fits iALS on the training interactions (module docstring).

    The defaults were the best of a grid (factors 32/64/100, λ 0.01/1/10, α 1/10) on both a
    small synthetic log and MovieLens 100K; ``implicit``'s own (100 factors, λ = 0.01) fall below
    popularity on small logs (README, "The iALS baseline").

    Args:
        train: the training interactions (each (user, item) pair counts once).
        num_users: rows of the user factors (default: ``train``'s user vocabulary); users
            without a training row keep factors that score every item alike at 0.
        factors: the latent dimension.
        regularization: λ, the L2 penalty.
        alpha: the confidence of an observed pair is ``1 + alpha``.
        iterations: ALS sweeps (each solves the users, then the items).
        seed: the random initial factors.
        num_threads: ``implicit``'s threads (0: every core).

    Returns:
        The :class:`IALSFactors`.
    """
    from implicit.cpu.als import AlternatingLeastSquares  # noqa: PLC0415 - slow import
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    num_users = train.num_users if num_users is None else check_positive_int("num_users", num_users)
    factors = check_positive_int("factors", factors)
    iterations = check_positive_int("iterations", iterations)
    regularization = _check_number("regularization", regularization, positive=False)
    alpha = _check_number("alpha", alpha, positive=True)
    matrix = train.user_items(num_users).astype(np.float32)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    started = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):  # implicit checks this when built
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            random_state=seed,
            num_threads=num_threads,
        )
        model.fit(matrix, show_progress=False)
    seconds = time.perf_counter() - started
    logger.info(
        "iALS baseline: %d factors, %d iterations, fitted in %.2f s.", factors, iterations, seconds
    )
    return IALSFactors(
        np.asarray(model.user_factors, np.float32),
        np.asarray(model.item_factors, np.float32),
        seconds,
    )


def ials_scores(train: Interactions, **options: object) -> ScoreFunction:
    """Scores ``x_uᵀ y_i`` of iALS fitted on ``train`` (``options``: those of :func:`fit_ials`)."""
    fitted = fit_ials(train, **options)
    return embedding_scores(fitted.user_factors, fitted.item_factors)
