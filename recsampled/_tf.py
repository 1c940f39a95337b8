"""What TensorFlow's public API does not say: whether the graph being traced is XLA-compiled.

Example:
    >>> import tensorflow as tf
    >>> compiling_with_xla()
    False
    >>> bool(tf.function(lambda: tf.constant(compiling_with_xla()), jit_compile=True)())
    True
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.ops import control_flow_util


def compiling_with_xla() -> bool:
    """Whether the graph being traced (or one it is nested in) is compiled by XLA
    (``tf.function(jit_compile=True)``, ``Model.compile(jit_compile=True)``): code that needs a
    kernel XLA lacks, or shapes fixed per compilation, picks its variant at trace time."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
