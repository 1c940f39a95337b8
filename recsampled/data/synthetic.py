"""A seeded synthetic interaction log with Zipf popularity and planted taste clusters.

The generative story (all of it vectorised NumPy, so 10^7 rows take seconds):

1. Items get a popularity ``w_i = (1 + r_i) ** -zipf_exponent`` from a random rank ``r_i`` and
   a taste cluster ``c_i``, uniform over ``num_clusters``; users get a cluster ``c_u`` too.
2. User ``u`` makes ``n_u`` interactions: ``min_user_interactions`` plus a multinomial share of
   the rest, with log-normal activity weights (a few heavy users, many light ones).
3. Each interaction picks, with probability ``cluster_affinity``, an item of the user's cluster
   with probability proportional to ``w_i``; otherwise any item, again proportional to ``w_i``.
   Both draws are one ``searchsorted`` into the cumulative popularity of items sorted by cluster.
4. Each user is active over a random window; their interactions are spread over it by
   exponential gaps. Rows are returned in time order, as a log would be.

The planted structure is known (``user_clusters``, ``item_clusters``), so tests can check that a
model that learns tastes beats the popularity baseline: with ``cluster_affinity = 0.8`` and 20
clusters, the popular items of a user's cluster are far likelier for that user than the globally
popular ones. Users draw with replacement, so logs contain repeated (user, item) pairs, as click
logs do; loading de-duplicates them by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from recsampled._validation import check_non_negative_float, check_positive_int, received
from recsampled.data.interactions import Interactions, read_interactions

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"num_users": 200, "num_items": 300, "num_interactions": 6_000, "num_clusters": 5},
    "small": {"num_users": 2_000, "num_items": 5_000, "num_interactions": 100_000},
    "medium": {"num_users": 50_000, "num_items": 100_000, "num_interactions": 2_000_000},
    "large": {
        "num_users": 200_000,
        "num_items": 1_000_000,
        "num_interactions": 10_000_000,
        "num_clusters": 100,
    },
}
"""Named sizes for ``generate(**SIZES[name])``: tests, demos, and the 10^7-row benchmark."""


@dataclass(frozen=True, eq=False)
class SyntheticLog:
    """A generated log with original ids, in time order, and its planted clusters.

    Attributes:
        user_ids: ``[n]`` int64 original user ids (a permutation of ``range(num_users)``).
        item_ids: ``[n]`` int64 original item ids (a permutation of ``range(num_items)``).
        timestamps: ``[n]`` int64 Unix seconds, non-decreasing.
        user_clusters: ``[num_users]`` int32 cluster of each original user id.
        item_clusters: ``[num_items]`` int32 cluster of each original item id.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    user_clusters: np.ndarray
    item_clusters: np.ndarray

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def to_table(self) -> pa.Table:
        """The log as a pyarrow Table with columns ``user_id``, ``item_id``, ``timestamp``."""
        return pa.table(
            {"user_id": self.user_ids, "item_id": self.item_ids, "timestamp": self.timestamps}
        )

    def to_interactions(self, **read_kwargs: Any) -> Interactions:
        """Loads the log as :func:`read_interactions` would load it from a file."""
        return read_interactions(self.to_table(), timestamp_col="timestamp", **read_kwargs)


def _check_probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"`{name}` must be a number in [0, 1]. {received(name, value)}")
    return float(value)


def _draw_items(
    rng: np.random.Generator,
    popularity: np.ndarray,
    item_cluster: np.ndarray,
    row_cluster: np.ndarray,
    cluster_affinity: float,
    num_clusters: int,
) -> np.ndarray:
    """``[num_interactions]`` int32 items: each row inside its user's cluster with probability
    ``cluster_affinity``, else from the whole catalogue, by popularity (step 3 of ``generate``)."""
    num_items, num_interactions = len(popularity), len(row_cluster)
    by_cluster = np.argsort(item_cluster, kind="stable")
    cumulative = np.cumsum(popularity[by_cluster])
    cluster_mass = np.bincount(item_cluster, weights=popularity, minlength=num_clusters)
    cluster_start = np.cumsum(cluster_mass) - cluster_mass
    u = rng.random(num_interactions)
    in_cluster = rng.random(num_interactions) < cluster_affinity
    target = np.where(
        in_cluster,
        cluster_start[row_cluster] + u * cluster_mass[row_cluster],
        u * cumulative[-1],
    )
    del u, in_cluster
    order = np.argsort(target)  # sorted queries make searchsorted cache-friendly (3x faster)
    position = np.empty(num_interactions, np.int64)
    position[order] = np.searchsorted(cumulative, target[order], side="right")
    np.minimum(position, num_items - 1, out=position)
    del target, order
    return by_cluster[position].astype(np.int32)


def _draw_timestamps(
    rng: np.random.Generator,
    counts: np.ndarray,
    user: np.ndarray,
    *,
    start_time: int,
    duration: int,
) -> np.ndarray:
    """``[num_interactions]`` int64 timestamps: a window per user, exponential gaps inside it
    (step 4 of ``generate``)."""
    num_users, num_interactions = len(counts), len(user)
    window = duration // 2
    first = rng.integers(0, duration - window + 1, size=num_users)
    gaps = rng.exponential(1.0, size=num_interactions) * (window / counts)[user]
    elapsed = np.cumsum(gaps)
    group_start = np.cumsum(counts) - counts
    before = elapsed[group_start] - gaps[group_start]  # elapsed time of earlier users' rows
    del gaps
    elapsed -= np.repeat(before, counts)
    return start_time + first[user] + np.minimum(elapsed, window).astype(np.int64)


def generate(
    *,
    num_users: int = 1_000,
    num_items: int = 2_000,
    num_interactions: int = 50_000,
    num_clusters: int = 20,
    zipf_exponent: float = 0.8,
    cluster_affinity: float = 0.8,
    min_user_interactions: int = 5,
    start_time: int = 1_600_000_000,
    duration: int = 365 * 24 * 3600,
    seed: int = 0,
) -> SyntheticLog:
    """Generates a log with popularity skew and planted user/item taste clusters.

    Args:
        num_users: number of users.
        num_items: number of items (N); up to 10^6 and beyond.
        num_interactions: number of rows, at least ``num_users * min_user_interactions``.
        num_clusters: number of taste clusters, at most ``num_items``.
        zipf_exponent: popularity skew ``s`` in ``w = (1 + rank) ** -s``; 0 is uniform.
        cluster_affinity: probability that an interaction comes from the user's cluster.
        min_user_interactions: interactions every user makes at least.
        start_time: first possible timestamp (Unix seconds).
        duration: span of the timestamps in seconds.
        seed: the seed; the same arguments give the same log.

    Returns:
        A :class:`SyntheticLog`.

    Raises:
        ValueError: for non-positive sizes, too few interactions for ``min_user_interactions``,
            more clusters than items, or probabilities outside ``[0, 1]``.

    Example:
        >>> log = generate(**SIZES["tiny"], seed=1)
        >>> len(log), log.user_clusters.shape
        (6000, (200,))
    """
    num_users = check_positive_int("num_users", num_users)
    num_items = check_positive_int("num_items", num_items)
    num_clusters = check_positive_int("num_clusters", num_clusters)
    min_user_interactions = check_positive_int("min_user_interactions", min_user_interactions)
    num_interactions = check_positive_int("num_interactions", num_interactions)
    duration = check_positive_int("duration", duration)
    cluster_affinity = _check_probability("cluster_affinity", cluster_affinity)
    zipf_exponent = check_non_negative_float("zipf_exponent", zipf_exponent)
    if num_interactions < num_users * min_user_interactions:
        raise ValueError(
            "`num_interactions` must be at least num_users * min_user_interactions "
            f"({num_users * min_user_interactions}). Received: num_interactions={num_interactions}."
        )
    if num_clusters > num_items:
        raise ValueError(
            f"`num_clusters` must be at most num_items ({num_items}). "
            f"Received: num_clusters={num_clusters}."
        )
    rng = np.random.default_rng(seed)

    # 1. Items: popularity from a random rank, and a cluster; users: a cluster.
    popularity = (1.0 + rng.permutation(num_items)) ** -zipf_exponent
    item_cluster = rng.integers(num_clusters, size=num_items).astype(np.int32)
    user_cluster = rng.integers(num_clusters, size=num_users).astype(np.int32)

    # 2. Interactions per user: a floor plus a log-normal share of the rest.
    activity = rng.lognormal(0.0, 1.0, size=num_users)
    rest = num_interactions - num_users * min_user_interactions
    extra = rng.multinomial(rest, activity / activity.sum())
    counts = min_user_interactions + extra
    user = np.repeat(np.arange(num_users, dtype=np.int32), counts)

    # 3. Items: inverse-CDF draws over items sorted by cluster, inside the user's cluster's
    #    segment of the cumulative popularity, or (otherwise) over the whole of it.
    item = _draw_items(
        rng, popularity, item_cluster, user_cluster[user], cluster_affinity, num_clusters
    )

    # 4. Timestamps: a window per user, exponential gaps inside it; then time order.
    timestamps = _draw_timestamps(rng, counts, user, start_time=start_time, duration=duration)
    order = np.argsort(timestamps, kind="stable")

    # Original ids: permutations, so that the popularity-ordered vocabulary is a real mapping.
    user_ids = rng.permutation(num_users).astype(np.int64)
    item_ids = rng.permutation(num_items).astype(np.int64)
    user_clusters = np.empty(num_users, np.int32)
    user_clusters[user_ids] = user_cluster
    item_clusters = np.empty(num_items, np.int32)
    item_clusters[item_ids] = item_cluster
    return SyntheticLog(
        user_ids=user_ids[user[order]],
        item_ids=item_ids[item[order]],
        timestamps=timestamps[order],
        user_clusters=user_clusters,
        item_clusters=item_clusters,
    )
