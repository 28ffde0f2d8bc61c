"""ckptsurgery: graph-free surgery on TensorFlow checkpoints in bounded memory.

Data flows one way: sources (:mod:`.io`) -> plan (:mod:`.plan`, built from
:mod:`.plan.rules`) -> per-tensor transforms (:mod:`.transforms`, :mod:`.merge_methods`)
-> the executor (:mod:`.execute`) -> the shard writer and atomic publish (:mod:`.io`).
:mod:`.api` mirrors the CLI (:mod:`.cli`).
"""

import os as _os

# TensorFlow's C++ start-up chatter drowns our one-line errors; users can override.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from . import api  # noqa: E402
from .api import *  # noqa: E402,F401,F403  (the front door: every command and the data types; see api.__all__)

__version__ = "0.1.0"

__all__ = list(api.__all__)
