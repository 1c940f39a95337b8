"""Makes ``tf.keras`` resolve to Keras 2 (``tf_keras``), which TFRS requires.

TensorFlow 2.16+ resolves ``tf.keras`` lazily, on first attribute access, to Keras 3 unless the
environment variable ``TF_USE_LEGACY_KERAS`` is true at that moment. Three steps, in order:

- :func:`prefer_legacy_keras` (``import recsampled``): sets the variable when it is unset and
  ``tf.keras`` is not bound yet. It imports nothing and never raises, so that ``import
  recsampled`` stays cheap and a Keras 3 user can still import ``recsampled.keras3``.
- :func:`ensure_legacy_keras` (first thing in every subpackage that uses ``tf.keras``: ``layers``,
  ``tasks``, ``models``, ``samplers``, ``training``, ``index``): sets the variable, imports
  TensorFlow and checks that ``tf.keras`` is Keras 2; fails early, with the fix, when too late.
- :func:`release_legacy_keras` (``import recsampled.keras3``): takes back a variable that
  :func:`prefer_legacy_keras` set, as long as nothing needed it yet, so that the Keras 3 module
  does not switch the user's ``tf.keras`` to Keras 2.
"""

from __future__ import annotations

import os
import sys

_VARIABLE = "TF_USE_LEGACY_KERAS"
_TRUE = ("1", "true", "True", "TRUE")

_HOW_TO_FIX = (
    "Import recsampled (or set the environment variable TF_USE_LEGACY_KERAS=1) before "
    "TensorFlow's `tf.keras` is first used, for example put `import recsampled` at the top of "
    "your script, or run `export TF_USE_LEGACY_KERAS=1` in the shell that starts Python."
)

_state = {"provisional": False, "committed": False}
"""Whether :func:`prefer_legacy_keras` set the variable, and whether a tf-keras part needed it."""


def bound_keras() -> str | None:
    """The module ``tf.keras`` is bound to (e.g. ``"tf_keras.api._v2.keras"``), or None.

    None when TensorFlow is not imported or has not resolved its lazy ``tf.keras`` yet; this
    never triggers that resolution.
    """
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is None:
        return None
    keras = vars(tensorflow).get("keras")
    if keras is None:
        return None
    if type(keras).__name__ == "KerasLazyLoader":  # TensorFlow's lazy loader, not resolved yet
        if not vars(keras).get("_tfll_initialized", False):
            return None
        version = vars(keras).get("_tfll_keras_version")
        return "tf_keras" if version == "tf_keras" else f"keras ({version})"
    return getattr(keras, "__name__", repr(keras))


def prefer_legacy_keras() -> None:
    """Sets ``TF_USE_LEGACY_KERAS=1`` if it is unset and ``tf.keras`` is not bound; no import."""
    if os.environ.get(_VARIABLE) is None and bound_keras() is None:
        os.environ[_VARIABLE] = "1"
        _state["provisional"] = True


def release_legacy_keras() -> bool:
    """Unsets the variable :func:`prefer_legacy_keras` set, if no tf-keras part needed it yet.

    Returns:
        True when it unset the variable.
    """
    if not _state["provisional"] or _state["committed"] or bound_keras() is not None:
        return False
    if os.environ.get(_VARIABLE) == "1":
        del os.environ[_VARIABLE]
    _state["provisional"] = False
    return True


def ensure_legacy_keras() -> None:
    """Sets ``TF_USE_LEGACY_KERAS=1`` and checks that ``tf.keras`` is Keras 2.

    Raises:
        ImportError: if the variable is set to a false value, if ``tf_keras`` is not installed,
            or if TensorFlow already bound ``tf.keras`` to Keras 3 in this interpreter.
    """
    _state["committed"] = True
    value = os.environ.get(_VARIABLE)
    if value is None:
        os.environ[_VARIABLE] = "1"
    elif value not in _TRUE:
        raise ImportError(
            "recsampled needs Keras 2 (`tf_keras`) because tensorflow-recommenders does, but "
            f"the environment variable TF_USE_LEGACY_KERAS is set to {value!r}. "
            "Unset it or set TF_USE_LEGACY_KERAS=1 before starting Python (or use the Keras 3 "
            "layer, `recsampled.keras3`, which does not need it)."
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
