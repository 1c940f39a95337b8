"""Makes ``tf.keras`` resolve to Keras 2 (``tf_keras``), which TFRS requires.

TensorFlow 2.16+ resolves ``tf.keras`` lazily, on first attribute access, to Keras 3 unless the
environment variable ``TF_USE_LEGACY_KERAS`` is true at that moment. This module sets it before
TensorFlow is imported (or before ``tf.keras`` is first touched) and fails early, with the fix,
when it is too late.
"""

from __future__ import annotations

import os
import sys

_TRUE = ("1", "true", "True", "TRUE")

_HOW_TO_FIX = (
    "Import recsampled (or set the environment variable TF_USE_LEGACY_KERAS=1) before "
    "TensorFlow's `tf.keras` is first used, for example put `import recsampled` at the top of "
    "your script, or run `export TF_USE_LEGACY_KERAS=1` in the shell that starts Python."
)


def ensure_legacy_keras() -> None:
    """Sets ``TF_USE_LEGACY_KERAS=1`` and checks that ``tf.keras`` is Keras 2.

    Raises:
        ImportError: if the variable is set to a false value, if ``tf_keras`` is not installed,
            or if TensorFlow already bound ``tf.keras`` to Keras 3 in this interpreter.
    """
    value = os.environ.get("TF_USE_LEGACY_KERAS")
    if value is None:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    elif value not in _TRUE:
        raise ImportError(
            "recsampled needs Keras 2 (`tf_keras`) because tensorflow-recommenders does, but "
            f"the environment variable TF_USE_LEGACY_KERAS is set to {value!r}. "
            "Unset it or set TF_USE_LEGACY_KERAS=1 before starting Python."
        )
    try:
        import tf_keras  # noqa: F401
    except ImportError as e:  # pragma: no cover - the package depends on tf-keras
        raise ImportError(
            "recsampled needs the `tf-keras` package (Keras 2 for TensorFlow). "
            "Install it with `pip install 'tf-keras==2.21.*'`."
        ) from e

    already_imported = "tensorflow" in sys.modules
    import tensorflow as tf

    keras_module = tf.keras.__name__
    if not keras_module.startswith("tf_keras"):
        when = "before recsampled was imported" if already_imported else "at import"
        raise ImportError(
            "recsampled needs tf.keras to be Keras 2 (`tf_keras`), but TensorFlow bound tf.keras "
            f"to Keras 3 ({keras_module}, version {getattr(tf.keras, '__version__', '?')}) "
            f"{when}. {_HOW_TO_FIX}"
        )
