"""The request and response bodies of the HTTP service, with their field rules.

Every body is a pydantic model, so FastAPI checks it and documents it at ``/docs``. Ids are
JSON integers (within int64) or strings (1 to :data:`MAX_ID_LENGTH` characters); ``k`` is a
positive integer; vectors hold finite numbers. Rules that depend on the loaded artifact or on
the server's limits (``k`` at most the catalogue size, the number of ids per request, the
dimension of a query vector) are checked by the app (:mod:`recsampled.serving.app`) and answered
in the same error format.

Example:
    >>> RecommendRequest(user_ids=[196, "u7"], k=5).k
    5
    >>> RecommendRequest.model_validate({"user_ids": [1], "k": 0})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for RecommendRequest
    k
      Input should be greater than or equal to 1 ...
"""

from __future__ import annotations

import numbers
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    WithJsonSchema,
)

MAX_ID_LENGTH = 256
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _check_id(value: object) -> int | str:
    """An id is a JSON integer within int64 or a string of 1 to MAX_ID_LENGTH characters."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if INT64_MIN <= value <= INT64_MAX:
            return int(value)  # NumPy integers too, for Python callers
        raise ValueError("an integer id must fit in int64")
    if isinstance(value, str):  # NumPy strings are str
        if 1 <= len(value) <= MAX_ID_LENGTH:
            return value
        raise ValueError(f"a string id must have 1 to {MAX_ID_LENGTH} characters")
    raise ValueError("an id must be an integer or a string")


Id = Annotated[
    int | str,
    PlainValidator(_check_id),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
                {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
            ]
        }
    ),
]
K = Annotated[StrictInt, Field(ge=1, description="items per query (at most the catalogue size)")]
IdList = Annotated[list[Id], Field(min_length=1)]
FLOAT32_MAX = 3.4028234663852886e38


def _check_number(value: object) -> float:
    """A vector entry is a JSON number that float32 holds finitely."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a vector entry must be a number")
    try:
        number = float(value)
    except OverflowError:
        number = float("inf")
    if not abs(number) <= FLOAT32_MAX:  # also false for NaN
        raise ValueError("a vector entry must be a finite number within float32's range")
    return number


FiniteFloat = Annotated[float, PlainValidator(_check_number), WithJsonSchema({"type": "number"})]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    k: K = 10
    allow_items: IdList | None = Field(
        default=None,
        description="only these item ids may be returned (exact scoring over them)",
    )
    deny_items: list[Id] | None = Field(
        default=None, description="these item ids are never returned"
    )


class RecommendRequest(_Request):
    """``POST /recommend``: top-k items for each user, in the order asked."""

    user_ids: IdList = Field(description="original user ids (the artifact's user vocabulary)")
    exclude_seen: StrictBool = Field(
        default=True,
        description="leave out the items each user has seen (recorded at export; without "
        "them the default does nothing and an explicit true is a 422)",
    )
    unknown_user: Literal["error", "popular"] = Field(
        default="error",
        description="unknown users: a 404 naming them, or the most popular items "
        "(marked `fallback: true`)",
    )


class SimilarItemsRequest(_Request):
    """``POST /similar-items``: the top-k other items for each item, in the order asked."""

    item_ids: IdList = Field(description="original item ids (the artifact's catalogue)")


class EmbeddingRequest(_Request):
    """``POST /recommend-by-embedding``: top-k items for raw query vectors."""

    query_embeddings: Annotated[list[list[FiniteFloat]], Field(min_length=1)] = Field(
        description="[batch_size, embedding_dim] query vectors (normalised here for cosine)"
    )


class ScoredItem(BaseModel):
    item_id: int | str
    score: float


class UserResult(BaseModel):
    user_id: int | str
    items: list[ScoredItem]
    fallback: bool = Field(
        default=False, description="true where popular items stand in for an unknown user"
    )


class ItemResult(BaseModel):
    item_id: int | str
    items: list[ScoredItem]


class QueryResult(BaseModel):
    query: int = Field(description="the position of the vector in `query_embeddings`")
    items: list[ScoredItem]


class RecommendResponse(BaseModel):
    results: list[UserResult]


class SimilarItemsResponse(BaseModel):
    results: list[ItemResult]


class EmbeddingResponse(BaseModel):
    results: list[QueryResult]


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the field at fault, e.g. `user_ids.3`")
    rule: str = Field(description="the rule it broke")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: a machine-readable kind, one message, the fields at fault."""

    error: str = Field(description="the kind, e.g. `invalid_request`, `unknown_user`")
    message: str
    errors: list[FieldError] = []
    ids: list[int | str] | None = Field(
        default=None, description="the unknown ids, for `unknown_user` and `unknown_item`"
    )


class ReloadResponse(BaseModel):
    reloaded: bool
    generation: int
    path: str
    num_items: int
    message: str
