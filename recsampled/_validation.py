"""Argument checks that raise ``ValueError`` in the Keras template.

The template: name the argument, state the rule, show what was received, e.g.
"`num_sampled` must be a positive integer. Received: num_sampled=0 (of type int)."
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def received(name: str, value: Any) -> str:
    """Formats the "Received: ..." tail of an error message."""
    text = repr(value)
    if len(text) > 200:
        text = text[:200] + "..."
    return f"Received: {name}={text} (of type {type(value).__name__})."


def check_bool(name: str, value: Any) -> bool:
    """Returns ``value`` if it is a bool, else raises the Keras-style ``ValueError``.

    >>> check_bool("unique", True)
    True
    """
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool. {received(name, value)}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """Returns ``value`` as an ``int`` if it is a positive integer, else raises ``ValueError``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral | np.integer)
        or int(value) <= 0
    ):
        raise ValueError(f"`{name}` must be a positive integer. {received(name, value)}")
    return int(value)


def check_non_negative_float(name: str, value: Any) -> float:
    """Returns ``value`` as a ``float`` if it is a finite number >= 0, else raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number >= 0. {received(name, value)}")
    if value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0. {received(name, value)}")
    return float(value)


def check_optional_seed(name: str, value: Any) -> int | None:
    """Returns ``value`` if it is ``None`` or an integer, else raises ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral | np.integer):
        raise ValueError(f"`{name}` must be None or an integer. {received(name, value)}")
    return int(value)


def check_num_sampled(num_sampled: Any, num_classes: int, unique: bool) -> int:
    """Checks ``num_sampled`` against ``num_classes`` (at most ``num_classes`` when unique)."""
    num_sampled = check_positive_int("num_sampled", num_sampled)
    if unique and num_sampled > num_classes:
        raise ValueError(
            "`num_sampled` must be at most `num_classes` when `unique=True` (there are only "
            f"{num_classes} distinct classes to draw). Received: num_sampled={num_sampled}, "
            f"num_classes={num_classes}."
        )
    return num_sampled
