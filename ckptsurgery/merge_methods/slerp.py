"""SLERP: spherical linear interpolation between exactly two tensors.

Paper: Shoemake 1985, "Animating Rotation with Quaternion Curves".
Use it to blend two models (e.g. two fine-tunes) along the arc between
them rather than the chord, which keeps the interpolated weights' norm
from shrinking the way a plain average does when the two point apart.

Each tensor is flattened to a vector.  The angle comes from normalised
copies; if they are nearly colinear (``|cos| > 0.9995``) or either is zero,
this falls back to linear interpolation.  Otherwise the result is
``sin((1-t)θ)/sin θ * a + sin(tθ)/sin θ * b`` on the original vectors.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UsageError
from .registry import register

COLINEAR_THRESHOLD = 0.9995


@register(
    "slerp",
    paper='Shoemake 1985, "Animating Rotation with Quaternion Curves"',
    needs_base=False,
    params={"t": 0.5},
    summary="spherical interpolation between exactly two inputs at t",
)
def merge(
    tensors: Sequence[np.ndarray],
    *,
    weights: Sequence[float] | None,
    base: np.ndarray | None,
    seed: int,
    t: float = 0.5,
) -> np.ndarray:
    """Interpolate from ``tensors[0]`` (t=0) to ``tensors[1]`` (t=1)."""
    if len(tensors) != 2:
        raise UsageError(f"slerp needs exactly 2 inputs, got {len(tensors)}")
    if weights is not None:
        raise UsageError("slerp takes the parameter t, not weights")
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise UsageError(f"slerp: t must be in [0, 1], got {t}")
    a = np.asarray(tensors[0], dtype=np.float64)
    b = np.asarray(tensors[1], dtype=np.float64)
    va, vb = a.ravel(), b.ravel()
    na, nb = np.linalg.norm(va), np.linalg.norm(vb)
    if na == 0 or nb == 0:
        return (1 - t) * a + t * b
    dot = float(np.clip(np.dot(va / na, vb / nb), -1.0, 1.0))
    if abs(dot) > COLINEAR_THRESHOLD:
        return (1 - t) * a + t * b
    theta = np.arccos(dot)
    sin_theta = np.sin(theta)
    return (np.sin((1 - t) * theta) / sin_theta) * a + (np.sin(t * theta) / sin_theta) * b
