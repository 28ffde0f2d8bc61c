"""Task arithmetic: add scaled task vectors ``theta_i - base`` to the base.

Paper: Ilharco et al. 2023, "Editing Models with Task Arithmetic".
Use it to combine several fine-tunes of one base model (each fine-tune's
change is a "task vector"), or with a negative weight to subtract a behaviour.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .registry import register, register_streaming, require_base, weights_or
from .streaming import add_scaled, check_shape, each_input, stream_weights


@register(
    "task_arithmetic",
    paper='Ilharco et al. 2023, "Editing Models with Task Arithmetic"',
    needs_base=True,
    params={},
    summary="base + sum_i w_i*(theta_i - base); weights default 1.0",
)
def merge(
    tensors: Sequence[np.ndarray],
    *,
    weights: Sequence[float] | None,
    base: np.ndarray | None,
    seed: int,
) -> np.ndarray:
    """``base + sum_i lambda_i * (theta_i - base)``; ``lambda_i`` are the weights
    (default 1.0 each)."""
    base = require_base("task_arithmetic", base)
    lambdas = weights_or(weights, len(tensors), 1.0)
    result = np.array(base, dtype=np.float64, copy=True)
    for lam, t in zip(lambdas, tensors):
        result += lam * (t - base)
    return result


def streaming_task_arithmetic(
    base: np.ndarray, arrays: Iterable[np.ndarray], count: int, weights: list[float] | None, name: str = ""
) -> np.ndarray:
    """``base + sum_i w_i (x_i - base)``, one input in memory at a time (weights default 1.0)."""
    w = stream_weights(weights, count, 1.0, name)
    result = np.array(base, dtype=np.float64, copy=True)
    for wi, array, _ in each_input(arrays, w, name):
        check_shape(array, result, name)
        add_scaled(result, array, wi, minus=base)
        del array
    return result


register_streaming(
    "task_arithmetic",
    applies=lambda has_base, params: has_base and not params,
    run=lambda base, arrays, count, weights, params, name, out_dtype: streaming_task_arithmetic(
        base, arrays, count, weights, name),
)
