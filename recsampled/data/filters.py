"""Row filters on encoded interactions: de-duplication and the k-core. Vectorised NumPy.

Each returns a boolean ``keep`` mask over the rows, so that callers drop rows from every column
at once and count what they dropped.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 1 << 20
_PACK_BITS = 63  # (key, position) pairs are packed into one int64 when they fit


def first_occurrences(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    num_items: int,
    timestamps: np.ndarray | None = None,
) -> np.ndarray:
    """Keeps one row per (user, item) pair: the earliest (by timestamp, then by row order).

    Args:
        user_ids: ``[n]`` non-negative integer user indices.
        item_ids: ``[n]`` integer item indices in ``[0, num_items)``.
        num_items: number of items (the pair key is ``user * num_items + item``).
        timestamps: optional ``[n]`` timestamps.

    Returns:
        ``[n]`` bool mask, True for the rows kept.

    Example:
        >>> first_occurrences(np.array([0, 0, 0]), np.array([1, 1, 2]), 3, np.array([9, 5, 7]))
        array([False,  True,  True])
    """
    n = user_ids.shape[0]
    keep = np.ones(n, bool)
    if n < 2:
        return keep
    if timestamps is None or bool(np.all(timestamps[1:] >= timestamps[:-1])):
        keep[_later_occurrences(user_ids, item_ids, num_items)] = False
    else:  # find repeats in time order, then map back to rows
        by_time = np.argsort(timestamps, kind="stable")
        later = _later_occurrences(user_ids[by_time], item_ids[by_time], num_items)
        keep[by_time[later]] = False
    return keep


def _later_occurrences(user_ids: np.ndarray, item_ids: np.ndarray, num_items: int) -> np.ndarray:
    """Positions of the rows whose (user, item) pair occurred at an earlier position."""
    n = user_ids.shape[0]
    key = user_ids.astype(np.int64) * num_items + item_ids
    key_bits = int(key.max()).bit_length()
    position_bits = (n - 1).bit_length()
    if key_bits + position_bits <= _PACK_BITS:
        # Sort (key, position) packed into one int64: a plain in-place sort, several times
        # faster than a stable argsort, and no [n] index array besides.
        key <<= position_bits
        key |= np.arange(n, dtype=np.int64)
        key.sort()
        repeat = _equal_to_previous(key, position_bits)
        return key[repeat] & ((1 << position_bits) - 1)
    order = np.argsort(key, kind="stable")
    key = key[order]
    return order[_equal_to_previous(key, 0)]


def _equal_to_previous(sorted_key: np.ndarray, shift: int) -> np.ndarray:
    """``[n]`` bool: ``sorted_key[j] >> shift == sorted_key[j - 1] >> shift`` (False at 0)."""
    n = sorted_key.shape[0]
    repeat = np.zeros(n, bool)
    for start in range(1, n, _BLOCK):  # in blocks: no [n] int64 temporaries
        block = sorted_key[start - 1 : min(start + _BLOCK, n)] >> shift
        np.equal(block[1:], block[:-1], out=repeat[start : start + block.size - 1])
    return repeat


def k_core(
    user_ids: np.ndarray, item_ids: np.ndarray, k: int, num_users: int, num_items: int
) -> np.ndarray:
    """Keeps the largest subset where every user and every item has at least ``k`` rows.

    Removes users and items below ``k`` repeatedly until none is left (removing an item can push
    a user below ``k`` and back again); the result is unique.

    Returns:
        ``[n]`` bool mask, True for the rows kept.

    Example:
        >>> k_core(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 0]), 2, 3, 2)
        array([ True,  True,  True,  True, False])
    """
    users, items, rows = user_ids, item_ids, None
    while users.size:
        user_counts = np.bincount(users, minlength=num_users)
        item_counts = np.bincount(items, minlength=num_items)
        ok = (user_counts[users] >= k) & (item_counts[items] >= k)
        if ok.all():
            break
        rows = np.flatnonzero(ok) if rows is None else rows[ok]
        users, items = users[ok], items[ok]
    keep = (
        np.zeros(user_ids.shape[0], bool) if rows is not None else np.ones(user_ids.shape[0], bool)
    )
    if rows is not None:
        keep[rows] = True
    return keep
