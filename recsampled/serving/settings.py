"""The service's options: limits on requests and the micro-batching parameters.

Example:
    >>> ServingSettings(max_batch_size=32, max_wait_ms=1.0).batching
    True
    >>> ServingSettings(max_batch_size=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `max_batch_size` must be a positive integer. Received: max_batch_size=0 ...
"""

from __future__ import annotations

import dataclasses
import numbers

USER_TABLE_BYTES = 256 << 20  # the default limit of the precomputed user-embedding table


@dataclasses.dataclass(frozen=True)
class ServingSettings:
    """Options of :func:`recsampled.serving.create_app`.

    Attributes:
        batching: group concurrent requests into one embedding call and one FAISS search
            (:mod:`recsampled.serving.batching`); if false, each request is answered on its own
            in a worker thread.
        batch_in_thread: run each shared search of two or more queries in a worker thread,
            so the event loop reads the next requests meanwhile (a lone request runs on the
            loop: no thread hand-off). On 2 idle cores at 64 clients on a 10^6-item IVF index
            this doubled the queries/s of per-request answering (2.0x against 1.6x on the loop).
        max_batch_size: at most this many queries (users, items or vectors, over all grouped
            requests) per shared search. A request larger than this runs as a batch of its own.
        max_wait_ms: how long the first request of a batch waits for others to join.
        max_ids: ids (or vectors) per request.
        max_k: the largest ``k`` (besides the catalogue size).
        max_list_items: entries per ``allow_items`` / ``deny_items`` list.
        max_body_bytes: larger request bodies are refused with 413 before they are parsed.
        admin_token: if set, ``POST /admin/reload`` needs ``Authorization: Bearer <token>``.
        verify_checksums: check every file's sha256 on load and reload.
        user_table_bytes: if every user's query embedding fits in this many bytes, they are
            computed once at load (and at each reload) and a request looks its users up instead
            of calling the TensorFlow tower (whose per-call overhead is most of a small
            request's cost); 0 always calls the tower.
    """

    batching: bool = True
    batch_in_thread: bool = True
    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    max_ids: int = 1000
    max_k: int = 1000
    max_list_items: int = 10_000
    max_body_bytes: int = 1 << 20
    admin_token: str | None = None
    verify_checksums: bool = True
    user_table_bytes: int = USER_TABLE_BYTES

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_ids", "max_k", "max_list_items", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(
                    f"`{name}` must be a positive integer. "
                    f"Received: {name}={value!r} (of type {type(value).__name__})."
                )
        table = self.user_table_bytes
        if isinstance(table, bool) or not isinstance(table, numbers.Integral) or table < 0:
            raise ValueError(
                "`user_table_bytes` must be a non-negative integer. "
                f"Received: user_table_bytes={table!r} (of type {type(table).__name__})."
            )
        wait = self.max_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, numbers.Real) or not 0 <= wait < 1e4:
            raise ValueError(
                "`max_wait_ms` must be a number in [0, 10000). "
                f"Received: max_wait_ms={wait!r} (of type {type(wait).__name__})."
            )
