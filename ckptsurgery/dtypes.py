"""Checkpoint dtypes by name, with their numpy equivalents.

Plans and reports speak TensorFlow's dtype names (``float32``, ``bfloat16``,
``string``) because that is what users see in TF; numpy does the arithmetic.
``ml_dtypes`` (a TensorFlow dependency) supplies bfloat16 for numpy.
"""

from __future__ import annotations

import numpy as np

try:  # ml_dtypes ships with TensorFlow; bfloat16 and friends live there.
    import ml_dtypes

    _BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - TF always brings it
    _BFLOAT16 = None

_NUMPY = {
    "float16": np.float16, "float32": np.float32, "float64": np.float64,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
    "string": np.object_,
}

FLOATING = frozenset({"float16", "bfloat16", "float32", "float64"})
INTEGER = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})
COMPLEX = frozenset({"complex64", "complex128"})
NUMERIC = FLOATING | INTEGER | COMPLEX
KNOWN = NUMERIC | {"bool", "string"}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype that holds a tensor of TF dtype ``name``."""
    if name == "bfloat16":
        if _BFLOAT16 is None:  # pragma: no cover
            raise ValueError("bfloat16 needs the ml_dtypes package")
        return _BFLOAT16
    return np.dtype(_NUMPY[name])


def itemsize(name: str) -> int:
    """Bytes per element; 0 for strings, whose size is per element."""
    return 0 if name == "string" else numpy_dtype(name).itemsize


def dtype_name_of_array(array: np.ndarray) -> str:
    """The TF dtype name of a numpy array (``object`` arrays are strings)."""
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return "string"
    if _BFLOAT16 is not None and array.dtype == _BFLOAT16:
        return "bfloat16"
    for name, np_type in _NUMPY.items():
        if name != "string" and array.dtype == np.dtype(np_type):
            return name
    raise ValueError(f"unsupported numpy dtype {array.dtype}")
