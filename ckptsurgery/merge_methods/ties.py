"""TIES-Merging: trim, elect sign, disjoint merge of task vectors.

Paper: Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging
Models".  Use it instead of task arithmetic when merging several fine-tunes
whose small, redundant or sign-conflicting updates would otherwise cancel
out or blur each other.

Algorithm, per tensor, with task vectors ``tau_i = w_i * (theta_i - base)``
(weights default 1.0):

1. Trim: keep the ``k = ceil(density * size)`` largest-magnitude entries of
   each ``tau_i`` (every entry with ``|x| >= `` the k-th largest ``|x|``, so ties
   at the threshold are kept), zero the rest.
2. Elect: the sign of each element is ``sign(sum_i trimmed_i)``.
3. Disjoint mean: average, per element, the trimmed values that are nonzero
   and agree with the elected sign (0 where none do).
4. Result: ``base + lambda * merged``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import UsageError
from .registry import register, require_base, weights_or


def trim(tau: np.ndarray, density: float) -> np.ndarray:
    """Zero all but the top-``density`` fraction of ``tau`` by magnitude."""
    flat = np.abs(tau).ravel()
    if flat.size == 0:
        return tau.copy()
    k = min(flat.size, max(1, math.ceil(density * flat.size)))
    threshold = np.partition(flat, flat.size - k)[flat.size - k]
    return np.where(np.abs(tau) >= threshold, tau, 0.0)


@register(
    "ties",
    paper=(
        'Yadav et al. 2023, "TIES-Merging: Resolving Interference When '
        'Merging Models"'
    ),
    needs_base=True,
    params={"density": 0.2, "lambda": 1.0},
    summary="trim task vectors to top density, elect sign, disjoint mean",
)
def merge(
    tensors: Sequence[np.ndarray],
    *,
    weights: Sequence[float] | None,
    base: np.ndarray | None,
    seed: int,
    density: float = 0.2,
    **params: float,
) -> np.ndarray:
    """TIES merge of ``tensors`` onto ``base`` (see the module docstring)."""
    base = require_base("ties", base)
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise UsageError(f"ties: density must be in (0, 1], got {density}")
    lam = float(params.get("lambda", 1.0))  # "lambda" is a Python keyword
    w = weights_or(weights, len(tensors), 1.0)
    trimmed = np.stack([trim(wi * (t - base), density) for wi, t in zip(w, tensors)])
    elected = np.sign(trimmed.sum(axis=0))
    agree = (trimmed != 0) & (np.sign(trimmed) == elected)
    count = agree.sum(axis=0)
    total = np.where(agree, trimmed, 0.0).sum(axis=0)
    merged = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return base + lam * merged
