"""Per-tensor transforms: small pure functions on numpy arrays, in a registry.

A plan records each output tensor's transforms as :class:`Step` values
(an op name and its parameters); the executor looks each op up here and
applies it to one array at a time.  Adding a transform means adding one
function and registering it; the plan and the writer do not change.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .dtypes import COMPLEX, FLOATING, dtype_name_of_array, numpy_dtype
from .errors import UsageError

TransformFn = Callable[..., np.ndarray]
TRANSFORMS: dict[str, TransformFn] = {}


def register(name: str) -> Callable[[TransformFn], TransformFn]:
    def add(fn: TransformFn) -> TransformFn:
        TRANSFORMS[name] = fn
        return fn

    return add


@dataclass(frozen=True)
class Step:
    """One transform in a plan: ``op`` names a registered function."""

    op: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.op}({args})"


def apply_steps(array: np.ndarray, steps: tuple[Step, ...], tensor_name: str) -> np.ndarray:
    """Apply ``steps`` in order; ``tensor_name`` seeds any randomness."""
    for step in steps:
        array = TRANSFORMS[step.op](array, tensor_name=tensor_name, **step.params)
    return array


@register("cast")
def cast(array: np.ndarray, *, to: str, tensor_name: str = "") -> np.ndarray:
    """Cast to dtype ``to`` (round-to-nearest-even for bfloat16/float16).

    A float (or complex) value that is NaN, infinite or out of an integer
    dtype's range has no defined integer: numpy's result then depends on the
    CPU and on how many elements one call converts (SIMD or scalar loop), so
    the same cast gave other bits chunk by chunk than whole.  Such a cast is
    refused, naming the tensor and the value, rather than written as garbage.
    """
    target = numpy_dtype(to)
    if target.kind in "iu" and dtype_name_of_array(array) in FLOATING | COMPLEX:
        _check_fits_integer(array, target, tensor_name)
    with np.errstate(over="ignore"):  # an overflow is refused below, by name, not warned about
        result = array.astype(target)
    if to in FLOATING and dtype_name_of_array(array) in FLOATING and result.dtype.itemsize < array.dtype.itemsize:
        _check_no_overflow(array, result, tensor_name)
    return result


def _check_no_overflow(array: np.ndarray, result: np.ndarray, tensor_name: str) -> None:
    """Raise when a finite value became infinite by narrowing (203442 as float16 is inf): the output
    would load, and a metric count or an Adam moment of ``inf`` would poison training later."""
    flat_in, flat_out = array.reshape(-1), result.reshape(-1)
    for start in range(0, flat_out.size, _CHECK_PIECE):
        made = np.isinf(flat_out[start:start + _CHECK_PIECE]) & np.isfinite(flat_in[start:start + _CHECK_PIECE])
        if made.any():
            bad = flat_in[start + int(np.argmax(made))]
            raise UsageError(
                f"tensor {tensor_name!r}: cast {dtype_name_of_array(array)} -> {dtype_name_of_array(result)} "
                f"refused: value {float(bad)!r} overflows to infinity (give the cast a PATTERN that leaves "
                "this tensor out)")


#: elements checked at a time by :func:`_check_fits_integer`
_CHECK_PIECE = 1 << 16


def _check_fits_integer(array: np.ndarray, target: np.dtype, tensor_name: str, what: str = "") -> None:
    """Raise when a value of the float ``array`` truncates to no value of the integer ``target``
    (``what`` names the operation in the message; default: the cast)."""
    info = np.iinfo(target)
    low, high = float(info.min), float(info.max) + 1.0  # powers of two: exact in every float dtype used
    flat = (array.real if np.iscomplexobj(array) else array).reshape(-1)
    for start in range(0, flat.size, _CHECK_PIECE):  # in pieces: the temporaries stay small whatever the array
        values = flat[start:start + _CHECK_PIECE]
        if values.dtype.itemsize < 4:  # float16/bfloat16: compare as float32 (exact), not in the narrow type
            values = values.astype(np.float32)
        with np.errstate(invalid="ignore"):
            whole = np.trunc(values)
            fits = np.isfinite(values) & (whole >= low) & (whole < high)
        if fits.all():
            continue
        bad = values[int(np.argmin(fits))]
        what = what or f"cast {dtype_name_of_array(array)} -> {target.name}"
        raise UsageError(f"tensor {tensor_name!r}: {what} refused: value {float(bad)!r} is NaN, infinite or "
                         f"out of range for {target.name} (its integer would depend on the machine)")


@register("resize")
def resize(
    array: np.ndarray,
    *,
    shape: tuple[int, ...],
    init: str = "zeros",
    seed: int = 0,
    tensor_name: str = "",
) -> np.ndarray:
    """Slice or pad ``array`` to ``shape``, filling new cells per ``init``.

    Slicing keeps the leading part of each dimension (the first rows of a
    vocabulary); padding appends at the end.  ``init`` is ``zeros``,
    ``normal:STD``, ``uniform:LIMIT`` or ``mean`` (the mean of the kept
    entries along axis 0, the usual choice for new vocabulary rows).  Random
    fills are seeded by ``seed`` and the tensor name, so reruns agree.
    """
    kept = array[tuple(slice(0, min(old, new)) for old, new in zip(array.shape, shape))]
    if kept.shape == tuple(shape):
        return np.ascontiguousarray(kept)
    out = make_fill(shape, array.dtype, init, seed, tensor_name, kept)
    out[tuple(slice(0, n) for n in kept.shape)] = kept
    return out


def make_fill(shape, dtype, init: str, seed: int, tensor_name: str, kept: np.ndarray) -> np.ndarray:
    kind, _, arg = init.partition(":")
    if kind == "zeros":
        return np.zeros(shape, dtype=dtype) if dtype != np.object_ else np.full(shape, b"", dtype=object)
    if kind in ("normal", "uniform"):
        draws = random_fill(fill_rng(seed, tensor_name), init, shape)
        draws[tuple(slice(0, n) for n in kept.shape)] = 0.0  # the kept cells' draws are overwritten: not checked
        return fill_as(draws, dtype, init, tensor_name)
    if kind == "mean":
        mean = kept.astype(np.float64).mean(axis=0) if kept.size else 0.0
        return np.broadcast_to(np.asarray(mean), shape).astype(dtype).copy()
    raise ValueError(f"unknown init {init!r}")


def fill_rng(seed: int, tensor_name: str) -> np.random.Generator:
    """The generator of a random fill: seeded by the rule's seed and the tensor name, so reruns agree."""
    return np.random.default_rng([seed, zlib.crc32(tensor_name.encode())])


def random_fill(rng: np.random.Generator, init: str, size) -> np.ndarray:
    """``size`` float64 draws of a ``normal``/``uniform`` fill, in C order.

    The generator draws element after element, so successive calls continue
    one sequence: a fill drawn in pieces (the chunked path,
    :mod:`ckptsurgery.execute.chunked`) equals the fill drawn whole.
    """
    kind, _, arg = init.partition(":")
    if kind == "normal":
        return rng.normal(0.0, float(arg or 0.02), size=size)
    limit = float(arg or 0.05)
    return rng.uniform(-limit, limit, size=size)


def fill_as(draws: np.ndarray, dtype, init: str, tensor_name: str) -> np.ndarray:
    """A random fill's float64 draws in the tensor's dtype; for an integer tensor, a draw no integer
    of its dtype holds (a negative one for uint, beyond the range) is refused, as a cast's is (see :func:`cast`)."""
    target = np.dtype(dtype)
    if target.kind in "iu":
        _check_fits_integer(draws, target, tensor_name, f"resize fill {init} into {target.name}")
    return draws.astype(target)


INITS = ("zeros", "normal:STD", "uniform:LIMIT", "mean")


def check_init(init: str) -> str | None:
    """Return an error message for an invalid ``init`` spec, else None."""
    kind, _, arg = init.partition(":")
    if kind not in {"zeros", "normal", "uniform", "mean"}:
        return f"unknown initializer {init!r}; use one of {', '.join(INITS)}"
    if arg:
        try:
            float(arg)
        except ValueError:
            return f"initializer {init!r}: {arg!r} is not a number"
    return None
