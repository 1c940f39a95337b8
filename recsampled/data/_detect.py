"""Which columns of a log hold the user ids, item ids, timestamps and ratings, when not named.

:func:`detect_columns` picks them from the column names (header, Parquet schema, table), for
``read_interactions`` and ``recsampled train`` with no ``data.*_col`` set, and logs its choice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from recsampled.data.errors import DataError

logger = logging.getLogger("recsampled.data.readers")


def _normalised(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


_ALIASES = {
    "user": ("user_id", {
        "userid", "user", "uid", "users", "customerid", "customer", "visitorid", "memberid",
        "accountid", "clientid", "readerid", "viewerid", "listenerid"}),
    "item": ("item_id", {
        "itemid", "item", "iid", "items", "movieid", "movie", "productid", "product", "articleid",
        "trackid", "songid", "bookid", "isbn", "asin", "contentid", "videoid", "artistid",
        "businessid", "docid", "documentid", "postid"}),
    "timestamp": ("timestamp", {
        "timestamp", "ts", "time", "datetime", "date", "eventtime", "eventtimestamp", "unixtime",
        "createdat", "timestamps", "eventdate"}),
    "rating": ("rating", {"rating", "ratings", "score", "stars", "rate", "userrating"}),
}  # fmt: skip


_NOUNS = {"user": "user ids", "item": "item ids", "timestamp": "timestamps", "rating": "ratings"}


def detect_columns(
    source: str, found: Sequence[str], columns: Mapping[str, str | None]
) -> dict[str, str]:
    """Fills the roles ``columns`` maps to None from the column names ``found``.

    A role takes the column of its usual name (``user_id``, ``item_id``, ``timestamp``,
    ``rating``), else the one column named like it (``userId``, ``user``, ``movieId``, ``item``,
    ``ts``, ``time``, ``score``, ... compared without case and punctuation). Several such
    columns are an error that lists them; none leaves an optional role out (and the user and item
    roles at ``user_id``/``item_id``, which the missing-columns error then reports).

    Example:
        >>> detect_columns("log.csv", ["userId", "movieId", "score", "when"],
        ...                {"user": None, "item": None, "timestamp": None, "rating": None})
        {'user': 'userId', 'item': 'movieId', 'rating': 'score'}
    """
    taken = {name for name in columns.values() if name is not None}
    chosen, detected = {}, {}
    for role, name in columns.items():
        if name is not None:
            chosen[role] = name
            continue
        usual, aliases = _ALIASES[role]
        names = [str(f) for f in found if str(f) not in taken]
        candidates = [usual] if usual in names else [f for f in names if _normalised(f) in aliases]
        if len(candidates) > 1:
            raise DataError(
                f"{source}: cannot tell which column holds the {_NOUNS[role]}: candidates "
                f"{candidates}. Name it "
                f"with {role}_col= (data.{role}_col in a config, e.g. --set "
                f"data.{role}_col={candidates[0]}).",
                source=source,
            )
        if candidates:
            chosen[role] = detected[role] = candidates[0]
            taken.add(candidates[0])
        elif role in ("user", "item"):
            chosen[role] = usual
    if detected:
        logger.info(
            "%s: columns detected: %s (name others with data.<role>_col).",
            source,
            ", ".join(f"{role}={name!r}" for role, name in detected.items()),
        )
    return chosen
