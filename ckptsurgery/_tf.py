"""Lazy, quiet access to TensorFlow.

Importing TensorFlow takes seconds and prints start-up noise, so commands
like ``--help`` and plan validation must not pay for it.  Everything that
needs TF calls :func:`tf` at the point of use, so commands that decode no
tensor (``inspect``, byte-path copies) never import it.  The CLI calls
:func:`quiet_when_imported`: if TF is imported later, the C++ start-up lines
(oneDNN, CUDA probing) that ``TF_CPP_MIN_LOG_LEVEL`` no longer silences are
hidden, and the C++ log level is raised to 3 before the import so errors TF
logs later (e.g. ``oneDNN supports DT_HALF only on platforms with AVX-512``
on the first float16 op) stay silent too: the user sees our one-line
messages and nothing else.  Fatal errors (a ``CHECK`` failure that aborts
the process) are still printed.  ``CKPTSURGERY_TF_LOGS=1`` shows TF's logs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from types import ModuleType


_import_lock = threading.Lock()
_quiet = False  # set by the CLI: hide TF's C++ start-up lines whenever TF ends up imported


@functools.lru_cache(maxsize=None)
def _import_tf() -> ModuleType:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow  # noqa: PLC0415 - deliberate lazy import

    tensorflow.get_logger().setLevel("ERROR")
    return tensorflow


def tf() -> ModuleType:
    """Import TensorFlow once, with its Python logging turned down (quietly, see :func:`quiet_when_imported`)."""
    if _import_tf.cache_info().currsize:
        return _import_tf()
    with _import_lock:  # one import; and stderr redirected by one thread at a time
        if _quiet and not os.environ.get("CKPTSURGERY_TF_LOGS") and not _import_tf.cache_info().currsize:
            with _stderr_fd_silenced():
                module = _import_tf()
                module.constant(0)  # device discovery (CUDA probing) logs here
            return module
        return _import_tf()


def quiet_when_imported() -> None:
    """CLI: import TF only if a command decodes a tensor, and then hide its C++ start-up chatter.

    Commands whose plans only copy bytes (and ``inspect``) then never pay the import.
    """
    global _quiet
    if os.environ.get("CKPTSURGERY_TF_LOGS"):
        return
    _quiet = True
    # TF reads the level once, at its first log line, so it is set before any import; the CLI
    # owns its stderr, so it overrides a level the environment set.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # errors too: only FATAL passes


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
    """Import TF now, with its C++ chatter hidden (for scripts that use TF themselves, like the demo).

    Set ``CKPTSURGERY_TF_LOGS=1`` to see TensorFlow's own logs.
    """
    quiet_when_imported()
    return tf()
