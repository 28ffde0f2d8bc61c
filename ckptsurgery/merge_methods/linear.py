"""Linear merge: a weighted average of the inputs (also plain averaging).

Paper: Wortsman et al. 2022, "Model soups: averaging weights of multiple
fine-tuned models improves accuracy without increasing inference time".
Use it to average checkpoints from one training run (the last N saves) or
fine-tunes of one base model that ended up in the same loss basin.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..errors import UsageError
from .registry import register, register_streaming, weights_or
from .streaming import add_scaled, can_overwrite, check_shape, each_input, finish_into, stream_weights


@register(
    "linear",
    paper=(
        "Wortsman et al. 2022, \"Model soups: averaging weights of multiple "
        "fine-tuned models improves accuracy without increasing inference time\""
    ),
    needs_base=False,
    params={"normalize": True},
    summary="weighted average sum_i w_i*theta_i (/ sum_i w_i when normalize)",
)
def merge(
    tensors: Sequence[np.ndarray],
    *,
    weights: Sequence[float] | None,
    base: np.ndarray | None,
    seed: int,
    normalize: bool = True,
) -> np.ndarray:
    """``sum_i w_i * theta_i``, divided by ``sum_i w_i`` when ``normalize``.

    Without weights every input gets ``1/n``: the plain mean.
    """
    _check_normalize(normalize)
    w = weights_or(weights, len(tensors), 1.0 / len(tensors))
    total = sum(wi * t for wi, t in zip(w, tensors))
    if normalize:
        total = total / _denominator(w)
    return np.asarray(total, dtype=np.float64)


def _check_normalize(normalize: object) -> None:
    if not isinstance(normalize, (bool, np.bool_)):
        raise UsageError(f"linear: normalize must be true or false, got {normalize!r}")


def _denominator(w: list[float]) -> float:
    denom = sum(w)
    if denom == 0:
        raise UsageError("linear: weights sum to 0; cannot normalize")
    return denom


def streaming_linear(
    arrays: Iterable[np.ndarray], count: int, weights: list[float] | None, normalize: bool, name: str = "",
    out_dtype: np.dtype | None = None,
) -> np.ndarray:
    """``sum_i w_i x_i`` (``/ sum_i w_i`` when ``normalize``), one input in memory at a time.

    Same arithmetic as the ``linear`` method: weights default to ``1/count``.
    Returns float64, or, when ``out_dtype`` is given and the last input has
    that dtype, the result cast to it and written over the last input's
    buffer as its chunks are consumed: then the peak is one float64
    accumulator plus one input, with no separate output copy.
    """
    _check_normalize(normalize)
    w = stream_weights(weights, count, 1.0 / count, name)
    acc: np.ndarray | None = None
    for wi, array, last in each_input(arrays, w, name):
        if acc is None:
            acc = np.zeros(array.shape, dtype=np.float64)  # 0 + x, like sum(): -0.0 becomes 0.0
        check_shape(array, acc, name)
        if last and can_overwrite(array, out_dtype):
            return finish_into(acc, array, wi, _denominator(w) if normalize else None)
        add_scaled(acc, array, wi)
        del array
    assert acc is not None
    if normalize:
        acc /= _denominator(w)
    return acc


# Plain and weighted averages and EMA stream (one float64 buffer, one input at a time).
register_streaming(
    "linear",
    applies=lambda has_base, params: not has_base,
    run=lambda base, arrays, count, weights, params, name, out_dtype: streaming_linear(
        arrays, count, weights, params.get("normalize", True), name, out_dtype),
)
