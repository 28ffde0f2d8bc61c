"""ckptsurgery: graph-free surgery on TensorFlow checkpoints in bounded memory.

Data flows one way: sources (:mod:`.io`) -> plan (:mod:`.plan`, built from
:mod:`.plan.rules`) -> per-tensor transforms (:mod:`.transforms`, :mod:`.merge_methods`)
-> the executor (:mod:`.execute`) -> the shard writer and atomic publish (:mod:`.io`).
:mod:`.api` mirrors the CLI (:mod:`.cli`).
"""

import importlib.util as _util
import os as _os
import sys as _sys

# TensorFlow's C++ start-up chatter drowns our one-line errors; users can override.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


def _lazy_module(name: str):
    """``name`` imported on first attribute access: ``inspect`` needs none of the writing
    machinery :mod:`.api` pulls in (executor, shard writer, merge methods)."""
    spec = _util.find_spec(name)
    spec.loader = _util.LazyLoader(spec.loader)
    module = _util.module_from_spec(spec)
    _sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


api = _lazy_module(__name__ + ".api")


def __getattr__(name: str):
    """The front door's names (every command and the data types; see ``api.__all__``), from :mod:`.api`."""
    if name == "__all__":
        return list(api.__all__)
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(api.__all__))
