"""Lazy, quiet access to TensorFlow.

Importing TensorFlow takes seconds and prints start-up noise, so commands
like ``--help`` and plan validation must not pay for it.  Everything that
needs TF calls :func:`tf` at the point of use.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType


@functools.lru_cache(maxsize=None)
def tf() -> ModuleType:
    """Import TensorFlow once, with its C++ and Python logging turned down."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow  # noqa: PLC0415 - deliberate lazy import

    tensorflow.get_logger().setLevel("ERROR")
    return tensorflow
