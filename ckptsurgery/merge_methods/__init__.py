"""Registry of merge methods: pure numpy functions combining one tensor at a time.

``ckptsurgery average`` and ``ckptsurgery merge`` look a method up by name and
call :func:`apply_method` once per tensor.  Every method is a function

    merge(tensors, *, weights, base, seed, **params) -> np.ndarray

registered with :func:`~.registry.register`, living in its own module next to this one
(adding a method is one new file here, plus its name in the import below).
:func:`apply_method` does the checks common to all methods (known parameter
names, equal shapes, a base when one is needed, weight count), converts every
input to float64 and returns float64; the caller casts back to the tensor's
dtype and checks the result for NaN/Inf.

Randomised methods (``dare``) are deterministic for a given ``seed``.  Because
the same seed is used for every call, tensors of equal shape get identical
drop masks; pass ``derive_seed(seed, tensor_name)`` to decorrelate them.
"""

from .registry import (MergeMethod, Streaming, apply_method, available_methods, derive_seed, get_method, register,
                       register_streaming, require_base, weights_or)

# Importing the method modules registers them.
from . import dare, linear, slerp, task_arithmetic, ties  # noqa: E402,F401

__all__ = [
    "MergeMethod",
    "Streaming",
    "apply_method",
    "available_methods",
    "derive_seed",
    "get_method",
    "register",
    "register_streaming",
    "require_base",
    "weights_or",
]
