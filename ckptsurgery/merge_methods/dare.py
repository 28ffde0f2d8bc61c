"""DARE: randomly Drop And REscale task vectors, then add them to the base.

Paper: Yu et al. 2024, "Language Models are Super Mario: Absorbing Abilities
from Homologous Models as a Free Lunch".  Use it when merging fine-tunes of
one base whose task vectors are highly redundant: dropping most of each delta
and rescaling the rest reduces interference while keeping the expected value.

Seeding (deterministic): the mask of input ``i`` comes from
``np.random.default_rng(seed + i).random(shape) < drop_rate`` (True = drop).
The same ``seed`` gives the same masks for every tensor of the same shape;
callers wanting independent masks per tensor pass
``ckptsurgery.merge_methods.derive_seed(seed, tensor_name)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UsageError
from .registry import register, require_base, weights_or


def drop_and_rescale(tau: np.ndarray, drop_rate: float, seed: int) -> np.ndarray:
    """Zero each element with probability ``drop_rate``; scale the rest by
    ``1 / (1 - drop_rate)``."""
    keep = np.random.default_rng(seed).random(tau.shape) >= drop_rate
    return np.where(keep, tau / (1.0 - drop_rate), 0.0)


@register(
    "dare",
    paper=(
        'Yu et al. 2024, "Language Models are Super Mario: Absorbing '
        'Abilities from Homologous Models as a Free Lunch"'
    ),
    needs_base=True,
    params={"drop_rate": 0.5},
    summary="drop task-vector entries at random, rescale, task arithmetic",
)
def merge(
    tensors: Sequence[np.ndarray],
    *,
    weights: Sequence[float] | None,
    base: np.ndarray | None,
    seed: int,
    drop_rate: float = 0.5,
) -> np.ndarray:
    """``base + sum_i w_i * dare(theta_i - base)``; weights default 1.0."""
    base = require_base("dare", base)
    drop_rate = float(drop_rate)
    if not 0.0 <= drop_rate < 1.0:
        raise UsageError(f"dare: drop_rate must be in [0, 1), got {drop_rate}")
    w = weights_or(weights, len(tensors), 1.0)
    result = np.array(base, dtype=np.float64, copy=True)
    for i, (wi, t) in enumerate(zip(w, tensors)):
        result += wi * drop_and_rescale(t - base, drop_rate, seed + i)
    return result
