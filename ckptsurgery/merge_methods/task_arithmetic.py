"""Task arithmetic: add scaled task vectors ``theta_i - base`` to the base.

Paper: Ilharco et al. 2023, "Editing Models with Task Arithmetic".
Use it to combine several fine-tunes of one base model (each fine-tune's
change is a "task vector"), or with a negative weight to subtract a behaviour.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ckptsurgery.merge_methods import register, require_base, weights_or


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
