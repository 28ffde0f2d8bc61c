"""Lazy, quiet access to TensorFlow.

Importing TensorFlow takes seconds and prints start-up noise, so commands
like ``--help`` and plan validation must not pay for it.  Everything that
needs TF calls :func:`tf` at the point of use.  The CLI additionally calls
:func:`import_quietly`, which keeps TensorFlow's C++ logging quiet for the
whole run, so the user sees our one-line messages and nothing else: the
start-up lines (CUDA probing) that ``TF_CPP_MIN_LOG_LEVEL`` does not reach
are hidden while TF loads, and the level is raised to 3 before the import so
errors TF logs later (e.g. ``oneDNN supports DT_HALF only on platforms with
AVX-512`` on the first float16 op) stay silent too.  Fatal errors (a
``CHECK`` failure that aborts the process) are still printed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from types import ModuleType


@functools.lru_cache(maxsize=None)
def tf() -> ModuleType:
    """Import TensorFlow once, with its Python logging turned down."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow  # noqa: PLC0415 - deliberate lazy import

    tensorflow.get_logger().setLevel("ERROR")
    return tensorflow


@contextlib.contextmanager
def _stderr_fd_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_quietly() -> ModuleType:
    """Import TF and initialise its runtime with C++ stderr chatter hidden (CLI only).

    Set ``CKPTSURGERY_TF_LOGS=1`` to see TensorFlow's own logs (start-up and
    later).  TF reads ``TF_CPP_MIN_LOG_LEVEL`` once, at its first log line,
    so it must be set before the import; the CLI owns its stderr, so it
    overrides a level the environment set.
    """
    if os.environ.get("CKPTSURGERY_TF_LOGS"):
        return tf()
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # errors too: only FATAL passes
    with _stderr_fd_silenced():
        module = tf()
        module.constant(0)  # device discovery (CUDA probing) logs here
    return module
