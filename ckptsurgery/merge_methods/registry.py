"""The merge-method registry: :func:`register` a method, :func:`get_method` it by name, :func:`apply_method` it.

A method is one module in this package that calls :func:`register` (and,
when it can combine inputs read one at a time, :func:`register_streaming`);
``merge_methods/__init__.py`` imports each module once.  See the package doc.
"""

from __future__ import annotations

import difflib
import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UsageError

MergeFunc = Callable[..., np.ndarray]


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method and what it accepts."""

    name: str
    func: MergeFunc
    paper: str
    needs_base: bool
    params: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    streaming: Streaming | None = None


_REGISTRY: dict[str, MergeMethod] = {}


def register(
    name: str,
    *,
    paper: str,
    needs_base: bool = False,
    params: dict[str, Any] | None = None,
    summary: str = "",
) -> Callable[[MergeFunc], MergeFunc]:
    """Decorator: register ``func`` under ``name``; ``params`` maps accepted
    parameter names to their defaults."""

    def decorator(func: MergeFunc) -> MergeFunc:
        if name in _REGISTRY:
            raise ValueError(f"merge method {name!r} registered twice")
        _REGISTRY[name] = MergeMethod(
            name=name,
            func=func,
            paper=paper,
            needs_base=needs_base,
            params=dict(params or {}),
            summary=summary,
        )
        return func

    return decorator


@dataclass(frozen=True)
class Streaming:
    """A method's streaming form: it reads the inputs of a tensor one at a time.

    ``applies(has_base, params)`` says, before any input is read, whether this
    call can stream; ``run(base, arrays, count, weights, params, name, out_dtype)``
    then computes the result from the lazy ``arrays`` (see
    :func:`ckptsurgery.execute.accumulate.combine`), bit-identical to ``func``.
    """

    applies: Callable[[bool, dict[str, Any]], bool]
    run: Callable[..., np.ndarray]


def register_streaming(name: str, *, applies: Callable[[bool, dict[str, Any]], bool],
                       run: Callable[..., np.ndarray]) -> None:
    """Give the registered method ``name`` a streaming form (see :class:`Streaming`)."""
    _REGISTRY[name] = replace(_REGISTRY[name], streaming=Streaming(applies, run))


def available_methods() -> list[str]:
    """Sorted names of all registered methods."""
    return sorted(_REGISTRY)


def _normalize_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def get_method(name: str) -> MergeMethod:
    """Look a method up by name (case-insensitive, ``-`` same as ``_``)."""
    key = _normalize_name(name)
    if key in _REGISTRY:
        return _REGISTRY[key]
    names = available_methods()
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(
        f"unknown merge method {name!r}{hint}; available: {', '.join(names)}"
    )


def derive_seed(seed: int, name: str) -> int:
    """A stable per-tensor seed: ``seed`` mixed with the CRC32 of ``name``."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % 2**32


def require_base(method: str, base: np.ndarray | None) -> np.ndarray:
    """Return ``base`` or raise the standard missing-base UsageError."""
    if base is None:
        raise UsageError(f"merge method {method!r} needs a base checkpoint")
    return base


def weights_or(
    weights: Sequence[float] | None, count: int, default: float
) -> list[float]:
    """``weights`` as floats, or ``count`` copies of ``default``."""
    if weights is None:
        return [default] * count
    return [float(w) for w in weights]


def _as_float64(array: Any, what: str) -> np.ndarray:
    arr = np.asarray(array)
    if np.iscomplexobj(arr) or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    ):
        raise UsageError(f"cannot merge {what} of dtype {arr.dtype}")
    return arr.astype(np.float64)


def apply_method(
    name: str,
    tensors: Sequence[np.ndarray],
    *,
    weights: Sequence[float] | None = None,
    base: np.ndarray | None = None,
    seed: int = 0,
    **params: Any,
) -> np.ndarray:
    """Validate the request, run method ``name`` in float64, return float64.

    Raises :class:`UsageError` for an unknown method or parameter, no
    tensors, mismatched shapes, a wrong number of weights, non-finite
    weights, a negative seed, a missing base for a method that needs one,
    or a base given to a method that does not use one.
    """
    method = get_method(name)
    unknown = sorted(set(params) - set(method.params))
    if unknown:
        accepted = ", ".join(sorted(method.params)) or "none"
        raise UsageError(
            f"merge method {method.name!r} has no parameter {unknown[0]!r}; "
            f"accepted: {accepted}"
        )
    if len(tensors) == 0:
        raise UsageError(f"merge method {method.name!r} needs at least one tensor")
    arrays = [_as_float64(t, f"input {i}") for i, t in enumerate(tensors)]
    shape = arrays[0].shape
    for i, arr in enumerate(arrays[1:], start=1):
        if arr.shape != shape:
            raise UsageError(
                f"shape mismatch: input 0 has shape {list(shape)}, "
                f"input {i} has shape {list(arr.shape)}"
            )
    base_arr: np.ndarray | None = None
    if base is not None:
        if not method.needs_base:
            raise UsageError(f"merge method {method.name!r} does not use a base")
        base_arr = _as_float64(base, "base")
        if base_arr.shape != shape:
            raise UsageError(
                f"shape mismatch: inputs have shape {list(shape)}, "
                f"base has shape {list(base_arr.shape)}"
            )
    elif method.needs_base:
        require_base(method.name, None)
    weight_list: list[float] | None = None
    if weights is not None:
        weight_list = [float(w) for w in weights]
        if len(weight_list) != len(arrays):
            raise UsageError(
                f"got {len(weight_list)} weights for {len(arrays)} inputs"
            )
        if not all(math.isfinite(w) for w in weight_list):
            raise UsageError(f"weights must be finite numbers, got {weight_list}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    merged_params = {**method.params, **params}
    result = method.func(
        arrays, weights=weight_list, base=base_arr, seed=int(seed), **merged_params
    )
    return np.asarray(result, dtype=np.float64).reshape(shape)
