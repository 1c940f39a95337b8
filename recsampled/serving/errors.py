"""The service's error answers: one JSON shape for every 4xx and 5xx.

``{"error": kind, "message": text, "errors": [{"field": ..., "rule": ...}], "ids": [...]}``
(:class:`recsampled.serving.schemas.ErrorResponse`). Kinds: ``malformed_json`` (400),
``unknown_user`` and ``unknown_item`` (404), ``invalid_request`` (422), ``body_too_large`` (413),
``unauthorized`` (401), ``reload_in_progress`` (409), ``artifact_refused`` (422),
``not_found`` and ``method_not_allowed`` for routes, ``internal`` (500, logged, never a
traceback in the answer).

Example:
    >>> error = ServiceError(422, "invalid_request", "`k` must be at most 300.", field="k")
    >>> error.body()["errors"]
    [{'field': 'k', 'rule': '`k` must be at most 300.'}]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ServiceError(Exception):
    """An error the service answers with a status and a JSON body.

    Args:
        status: the HTTP status.
        kind: the machine-readable kind (``error`` in the body, a label of the error metric).
        message: one sentence naming the field, the rule and what was received.
        field: the dotted path of the field at fault (its rule is ``message``).
        errors: several ``(field, rule)`` pairs instead of ``field``.
        ids: the unknown ids, for ``unknown_user`` / ``unknown_item``.
    """

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        field: str | None = None,
        errors: Sequence[tuple[str, str]] = (),
        ids: Sequence[Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.errors = list(errors) or ([(field, message)] if field else [])
        self.ids = None if ids is None else [_plain(i) for i in ids]

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "error": self.kind,
            "message": self.message,
            "errors": [{"field": f, "rule": r} for f, r in self.errors],
        }
        if self.ids is not None:
            body["ids"] = self.ids
        return body


def invalid(field: str, message: str) -> ServiceError:
    """A 422 ``invalid_request`` naming ``field``."""
    return ServiceError(422, "invalid_request", message, field=field)


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python value JSON can hold."""
    return value.item() if hasattr(value, "item") else value
