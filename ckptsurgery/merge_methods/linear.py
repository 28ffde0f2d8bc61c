"""Linear merge: a weighted average of the inputs (also plain averaging).

Paper: Wortsman et al. 2022, "Model soups: averaging weights of multiple
fine-tuned models improves accuracy without increasing inference time".
Use it to average checkpoints from one training run (the last N saves) or
fine-tunes of one base model that ended up in the same loss basin.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ckptsurgery.errors import UsageError
from ckptsurgery.merge_methods import register, weights_or


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
    if not isinstance(normalize, (bool, np.bool_)):
        raise UsageError(f"linear: normalize must be true or false, got {normalize!r}")
    w = weights_or(weights, len(tensors), 1.0 / len(tensors))
    total = sum(wi * t for wi, t in zip(w, tensors))
    if normalize:
        denom = sum(w)
        if denom == 0:
            raise UsageError("linear: weights sum to 0; cannot normalize")
        total = total / denom
    return np.asarray(total, dtype=np.float64)
