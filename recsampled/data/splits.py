"""Train/test splits of an interaction log: per user by time, per user at random, by a global time
cut, or as two files split beforehand; :func:`validation_split` carves a validation part out of
a training part.

Every split keeps the vocabularies of the log (train and test share indices) and removes test rows
whose user or item has no training interaction: a model cannot score them, so they are counted in
the :class:`SplitReport`, never silently kept or dropped, and never a crash.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsampled._validation import check_optional_seed, check_positive_int, received
from recsampled.data import filters
from recsampled.data.errors import DataError
from recsampled.data.interactions import (
    Interactions,
    LoadReport,
    check_options,
    read_interactions,
)
from recsampled.data.readers import read_log, resolve_columns, resolve_format

_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class SplitReport:
    """What a split put where, and which test rows it removed.

    Attributes:
        method: the split and its parameters, e.g. ``"leave_last_out(num_test=1)"``.
        train_rows: rows in the training set.
        test_rows: rows in the test set (after removals).
        test_users: distinct users in the test set.
        users_without_test: users with interactions but no test row (too few interactions, or
            none after a time cut).
        unknown_user_rows: test rows removed because their user has no training interaction.
        unknown_item_rows: test rows removed because their item has no training interaction
            (their user being known).
        unknown_examples: the first removed ids, e.g. ``"user 'u9'"``, ``"item 17"``.
        test_rows_seen_in_train: test rows whose (user, item) pair is also in training (kept;
            an evaluation that removes training items can never hit them).
        test_load: the load report of the test file, for splits read from two files.
    """

    method: str
    train_rows: int
    test_rows: int
    test_users: int
    users_without_test: int
    unknown_user_rows: int
    unknown_item_rows: int
    unknown_examples: tuple[str, ...] = ()
    test_rows_seen_in_train: int = 0
    test_load: LoadReport | None = None

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"{self.method}: {self.train_rows} train rows, {self.test_rows} test rows of "
            f"{self.test_users} users ({self.users_without_test} users without a test row).",
            f"Removed from test: {self.unknown_user_rows} rows of users and "
            f"{self.unknown_item_rows} rows of items unseen in training"
            + (f" (e.g. {', '.join(self.unknown_examples)})." if self.unknown_examples else "."),
        ]
        if self.test_rows_seen_in_train:
            lines.append(f"{self.test_rows_seen_in_train} test rows repeat a training pair.")
        return "\n".join(lines)


class Split(NamedTuple):
    """A train/test split; both parts share the vocabularies of the training data."""

    train: Interactions
    test: Interactions
    report: SplitReport


def _group_order(user_ids: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by (user, key, row) and, for each sorted row, its rank within its user."""
    order = np.lexsort((key, user_ids))  # lexsort is stable: equal keys keep row order
    counts = np.bincount(user_ids)
    starts = np.cumsum(counts) - counts
    rank = np.arange(order.size) - starts[user_ids[order]]
    return order, rank


def _finish(
    interactions: Interactions, test_mask: np.ndarray, method: str, users_without_test: int
) -> Split:
    """Removes test rows of users or items unseen in training; builds the report."""
    train_mask = ~test_mask
    users, items = interactions.user_ids, interactions.item_ids
    seen_users = np.bincount(users[train_mask], minlength=interactions.num_users) > 0
    seen_items = np.bincount(items[train_mask], minlength=interactions.num_items) > 0
    unknown_user = test_mask & ~seen_users[users]
    unknown_item = test_mask & ~unknown_user & ~seen_items[items]
    examples = _examples(interactions, unknown_user, unknown_item)
    test_mask = test_mask & ~unknown_user & ~unknown_item
    train, test = interactions.select(train_mask), interactions.select(test_mask)
    report = SplitReport(
        method=method,
        train_rows=len(train),
        test_rows=len(test),
        test_users=int(np.unique(test.user_ids).size),
        users_without_test=users_without_test,
        unknown_user_rows=int(unknown_user.sum()),
        unknown_item_rows=int(unknown_item.sum()),
        unknown_examples=examples,
    )
    return Split(train, test, report)


def _examples(
    interactions: Interactions, unknown_user: np.ndarray, unknown_item: np.ndarray
) -> tuple[str, ...]:
    users = _first_distinct(interactions.user_ids[unknown_user])
    items = _first_distinct(interactions.item_ids[unknown_item])
    shown = [f"user {u!r}" for u in interactions.users.decode(users).tolist()]
    shown += [f"item {i!r}" for i in interactions.items.decode(items).tolist()]
    return tuple(shown[:_MAX_EXAMPLES])


def _first_distinct(values: np.ndarray) -> np.ndarray:
    """The first ``_MAX_EXAMPLES`` distinct values, in order of appearance."""
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)[:_MAX_EXAMPLES]]


def _require_timestamps(interactions: Interactions, split: str) -> np.ndarray:
    if interactions.timestamps is None:
        raise ValueError(
            f"`{split}` needs timestamps, but the interactions have none. Pass `timestamp_col` "
            "to read_interactions, or use random_holdout."
        )
    return interactions.timestamps


def leave_last_out(interactions: Interactions, *, num_test: int = 1) -> Split:
    """Holds out each user's last ``num_test`` interactions (by timestamp, then row order).

    Users with ``num_test`` interactions or fewer stay entirely in training.

    Raises:
        ValueError: if the interactions have no timestamps, or ``num_test`` is not positive.

    Example:
        >>> from recsampled.data import synthetic
        >>> log = synthetic.generate(**synthetic.SIZES["tiny"], seed=0).to_interactions()
        >>> split = leave_last_out(log)
        >>> int(split.test.user_counts.max()), split.train.num_items == log.num_items
        (1, True)
    """
    num_test = check_positive_int("num_test", num_test)
    timestamps = _require_timestamps(interactions, "leave_last_out")
    users = interactions.user_ids
    order, rank = _group_order(users, timestamps)
    counts = np.bincount(users, minlength=interactions.num_users)
    sorted_counts = counts[users[order]]
    test_mask = np.zeros(len(interactions), bool)
    test_mask[order[(rank >= sorted_counts - num_test) & (sorted_counts > num_test)]] = True
    without = int(np.count_nonzero((counts > 0) & (counts <= num_test)))
    return _finish(interactions, test_mask, f"leave_last_out(num_test={num_test})", without)


def _check_fraction(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 < float(value) < 1.0
    ):
        raise ValueError(f"`{name}` must be a number in (0, 1). {received(name, value)}")
    return float(value)


def random_holdout(
    interactions: Interactions, *, test_fraction: float = 0.2, seed: int | None = 0
) -> Split:
    """Holds out a random ``test_fraction`` of each user's interactions (seeded).

    A user with ``n >= 2`` interactions gets ``round(test_fraction * n)`` test rows, clipped to
    ``[1, n - 1]``; users with one interaction stay in training.

    Raises:
        ValueError: if ``test_fraction`` is not in (0, 1) or ``seed`` is not an integer.
    """
    test_fraction = _check_fraction("test_fraction", test_fraction)
    seed = check_optional_seed("seed", seed)
    users = interactions.user_ids
    order, rank = _group_order(users, np.random.default_rng(seed).random(len(interactions)))
    counts = np.bincount(users, minlength=interactions.num_users)
    num_test = np.clip(np.floor(test_fraction * counts + 0.5), 1, counts - 1).astype(np.int64)
    num_test[counts < 2] = 0
    test_mask = np.zeros(len(interactions), bool)
    test_mask[order[rank < num_test[users[order]]]] = True
    without = int(np.count_nonzero(counts == 1))
    method = f"random_holdout(test_fraction={test_fraction}, seed={seed})"
    return _finish(interactions, test_mask, method, without)


def time_cut(
    interactions: Interactions,
    *,
    cutoff: float | None = None,
    test_fraction: float | None = None,
) -> Split:
    """Puts every interaction at or after a global time ``cutoff`` in the test set.

    Args:
        interactions: the log, with timestamps.
        cutoff: the first test timestamp. Give this or ``test_fraction``.
        test_fraction: choose the cutoff so that about this fraction of rows is in the test set
            (the ``1 - test_fraction`` quantile of the timestamps; ties all go to test).

    Raises:
        ValueError: without timestamps, or unless exactly one of ``cutoff`` and
            ``test_fraction`` is given.
    """
    timestamps = _require_timestamps(interactions, "time_cut")
    if (cutoff is None) == (test_fraction is None):
        raise ValueError(
            "Pass exactly one of `cutoff` and `test_fraction` to time_cut. "
            f"Received: cutoff={cutoff!r}, test_fraction={test_fraction!r}."
        )
    if test_fraction is not None:
        test_fraction = _check_fraction("test_fraction", test_fraction)
        cutoff = np.quantile(timestamps, 1.0 - test_fraction, method="higher").item()
    elif isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
        raise ValueError(f"`cutoff` must be a number (a timestamp). {received('cutoff', cutoff)}")
    test_mask = timestamps >= cutoff
    counts = np.bincount(interactions.user_ids, minlength=interactions.num_users)
    test_counts = np.bincount(interactions.user_ids[test_mask], minlength=interactions.num_users)
    without = int(np.count_nonzero((counts > 0) & (test_counts == 0)))
    return _finish(interactions, test_mask, f"time_cut(cutoff={cutoff})", without)


def validation_split(
    train: Interactions,
    *,
    per_user: int = 1,
    fraction: float = 0.1,
    seed: int | None = 0,
) -> Split:
    """Carves a validation part out of a training part: ``Split(fit, validation, report)``.

    With timestamps, each user's last ``per_user`` training interactions (:func:`leave_last_out`);
    without, a seeded random ``fraction`` of each user's (:func:`random_holdout`). The parts are
    disjoint row sets of ``train`` (the test split is never looked at) and keep its vocabularies.

    Raises:
        ValueError: for a bad ``per_user``, ``fraction`` or ``seed``.

    Example:
        >>> from recsampled.data import synthetic
        >>> log = synthetic.generate(**synthetic.SIZES["tiny"], seed=0).to_interactions()
        >>> fit, validation, _ = validation_split(leave_last_out(log).train)
        >>> int(validation.user_counts.max()), fit.num_items == log.num_items
        (1, True)
    """
    per_user = check_positive_int("per_user", per_user)
    fraction = _check_fraction("fraction", fraction)
    if train.timestamps is not None:
        split = leave_last_out(train, num_test=per_user)
    else:
        split = random_holdout(train, test_fraction=fraction, seed=seed)
    report = dataclasses.replace(split.report, method=f"validation: {split.report.method}")
    return Split(split.train, split.test, report)


def read_split(
    train_source: str | os.PathLike | pd.DataFrame | pa.Table,
    test_source: str | os.PathLike | pd.DataFrame | pa.Table,
    **read_kwargs: Any,
) -> Split:
    """Reads train and test files that were split beforehand; encodes test with train's ids.

    The training file goes through :func:`read_interactions` with ``read_kwargs`` (filters and
    k-core included). The test file is read with the same columns, format options, ``min_rating``,
    ``dedupe`` and ``on_bad_rows`` (the k-core is not applied to test data); its rows whose user
    or item is unknown in training are removed and counted in the report.

    Raises:
        FileNotFoundError, DataError, ValueError: as :func:`read_interactions`, for either file;
            DataError also when no test row has a known user and item.

    Example:
        >>> split = read_split("train.csv", "test.csv", timestamp_col="ts")  # doctest: +SKIP
    """
    train = read_interactions(train_source, **read_kwargs)
    test, unknown_user, unknown_item, examples = _read_test(test_source, train, read_kwargs)
    train_keys = train.user_ids.astype(np.int64) * train.num_items + train.item_ids
    test_keys = test.user_ids.astype(np.int64) * train.num_items + test.item_ids
    test_users = np.bincount(test.user_ids, minlength=train.num_users) > 0
    report = SplitReport(
        method=f"read_split({test.report.source})",
        train_rows=len(train),
        test_rows=len(test),
        test_users=int(test_users.sum()),
        users_without_test=int((~test_users).sum()),
        unknown_user_rows=unknown_user,
        unknown_item_rows=unknown_item,
        unknown_examples=examples,
        test_rows_seen_in_train=int(np.isin(test_keys, train_keys).sum()),
        test_load=test.report,
    )
    if len(test) == 0:
        raise DataError(
            f"{test.report.source}: no test row has a user and an item known in training "
            f"({unknown_user} rows of unknown users, {unknown_item} of unknown items, e.g. "
            f"{', '.join(examples)}). Check that both files use the same id columns.",
            source=test.report.source,
        )
    return Split(train, test, report)


def _read_test(
    source: str | os.PathLike | pd.DataFrame | pa.Table,
    train: Interactions,
    read_kwargs: dict[str, Any],
) -> tuple[Interactions, int, int, tuple[str, ...]]:
    """The test rows encoded with train's vocabularies, the unknown counts and examples."""
    format = read_kwargs.get("format", "auto")
    if not isinstance(source, pd.DataFrame | pa.Table):
        source, format = resolve_format(source, format)
    roles = ("user_col", "item_col", "timestamp_col", "rating_col", "weight_col")
    columns = resolve_columns(format, **{k: read_kwargs.get(k) for k in roles}, detect=True)
    min_rating = read_kwargs.get("min_rating")
    check_options(min_rating=min_rating, has_ratings="rating" in columns, k_core=None)
    options = ("delimiter", "column_names", "encoding", "on_bad_rows")
    log = read_log(
        source,
        format=format,
        columns=columns,
        id_dtype=read_kwargs.get("id_dtype", "auto"),  # the rules the training file met
        **{k: read_kwargs[k] for k in options if k in read_kwargs},
    )
    check_options(min_rating=min_rating, has_ratings="rating" in log.columns, k_core=None)
    num_rows = len(log.columns["user"])
    below = 0
    if min_rating is not None:
        keep = pc.greater_equal(log.columns["rating"], pa.scalar(float(min_rating)))
        below = num_rows - int(pc.sum(keep).as_py() or 0)
        log.columns.update({r: pc.filter(c, keep) for r, c in log.columns.items()})
    users = train.users.lookup(log.columns["user"])
    items = train.items.lookup(log.columns["item"])
    unknown_user = users < 0
    unknown_item = ~unknown_user & (items < 0)
    unknown_users = pc.unique(log.columns["user"].filter(unknown_user))[:_MAX_EXAMPLES]
    unknown_items = pc.unique(log.columns["item"].filter(unknown_item))[:_MAX_EXAMPLES]
    shown = [f"user {v!r}" for v in unknown_users.to_pylist()]
    shown += [f"item {v!r}" for v in unknown_items.to_pylist()]
    known = ~unknown_user & ~unknown_item
    arrays = {"user": users[known], "item": items[known]}
    for role in ("timestamp", "rating", "weight"):
        if role in log.columns:
            array = log.columns[role].to_numpy()[known]
            arrays[role] = array if role == "timestamp" else array.astype(np.float32)
    duplicates = 0
    if read_kwargs.get("dedupe", True):
        keep = filters.first_occurrences(
            arrays["user"], arrays["item"], train.num_items, arrays.get("timestamp")
        )
        duplicates = int(keep.size - keep.sum())
        arrays = {role: array[keep] for role, array in arrays.items()}
    report = LoadReport.of(
        log,
        below_min_rating=below,
        duplicates_removed=duplicates,
        k_core_removed=0,
        rows_kept=int(arrays["user"].size),
        num_users=int(np.unique(arrays["user"]).size),
        num_items=int(np.unique(arrays["item"]).size),
    )
    test = Interactions(
        arrays["user"],
        arrays["item"],
        train.users,
        train.items,
        timestamps=arrays.get("timestamp"),
        ratings=arrays.get("rating"),
        weights=arrays.get("weight"),
        report=report,
    )
    return test, int(unknown_user.sum()), int(unknown_item.sum()), tuple(shown[:_MAX_EXAMPLES])
