"""``diff``: what differs between two checkpoints, one tensor at a time.

Names only in A or only in B, dtype or shape differences, and for tensors
present in both with equal dtype and shape, whether the values are equal
(bit for bit, NaN equal to NaN) and, when not, the largest absolute and
relative difference.  Streaming: at most one tensor of each side is in
memory.  The object graph of a TF2 checkpoint is compared like any string
tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..text.display import display_name
from ..text.progress import progress_bar
from ..values import same_bits
from ..io.reader import Checkpoint, open_checkpoint


@dataclass
class ValueDiff:
    name: str
    max_abs: float | None
    max_rel: float | None
    differing: int
    total: int


@dataclass
class DiffReport:
    a: str
    b: str
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    dtype_or_shape: list[dict[str, Any]] = field(default_factory=list)
    values: list[ValueDiff] = field(default_factory=list)
    equal: int = 0

    @property
    def identical(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.dtype_or_shape or self.values)

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "identical": self.identical, "equal_tensors": self.equal,
            "only_in_a": self.only_in_a, "only_in_b": self.only_in_b,
            "dtype_or_shape": self.dtype_or_shape,
            "values": [vars(v) for v in self.values],
        }

    def render(self) -> str:
        lines = [f"- {n}  (only in A)" for n in self.only_in_a]
        lines += [f"+ {n}  (only in B)" for n in self.only_in_b]
        lines += [f"~ {d['name']}  {d['a']} vs {d['b']}" for d in self.dtype_or_shape]
        for v in self.values:
            detail = f"max abs {v.max_abs:.6g}, max rel {v.max_rel:.6g}" if v.max_abs is not None else "values differ"
            lines.append(f"! {v.name}  {detail} ({v.differing}/{v.total} elements differ)")
        lines.append(
            "identical" if self.identical else
            f"{len(self.only_in_a)} only in A, {len(self.only_in_b)} only in B, "
            f"{len(self.dtype_or_shape)} dtype/shape differences, {len(self.values)} value differences, "
            f"{self.equal} equal"
        )
        return "\n".join(display_name(line) for line in lines)  # one line per item: names are input


def _value_diff(name: str, x: np.ndarray, y: np.ndarray, atol: float) -> ValueDiff | None:
    if x.dtype == np.object_ or x.dtype.kind == "b":
        differing = int(np.count_nonzero(x != y))
        return ValueDiff(name, None, None, differing, x.size) if differing else None
    if same_bits(x, y):
        return None
    xf = x.astype(np.complex128 if x.dtype.kind == "c" else np.float64)
    yf = y.astype(xf.dtype)
    both_nan = np.isnan(xf) & np.isnan(yf)
    delta = np.where(both_nan, 0.0, np.abs(xf - yf))
    delta = np.nan_to_num(delta, nan=np.inf)
    differing = int(np.count_nonzero(delta > atol))
    if differing == 0:
        return None
    scale = np.maximum(np.abs(xf), np.abs(yf))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(scale > 0, delta / scale, 0.0)
    return ValueDiff(name, float(delta.max()), float(np.nan_to_num(rel, nan=np.inf).max()), differing, x.size)


def diff_group(group: tuple[str, str, tuple[str, ...], float]) -> list[ValueDiff | None]:
    """Compare the values of a group of names, where a cluster task runs (both sides reopened there)."""
    a, b, names, atol = group
    ca, cb = open_checkpoint(a), open_checkpoint(b)
    return [_value_diff(name, ca.read(name), cb.read(name), atol) for name in names]


def diff(
    a: str | Checkpoint, b: str | Checkpoint, *, atol: float = 0.0, values: bool = True, progress: bool | None = False,
    cluster: str | None = None, scheduler: str | None = None,
) -> DiffReport:
    """Compare two checkpoints; ``atol`` tolerates small value differences.

    ``cluster`` / ``scheduler``: the value comparisons run by groups as Dask
    tasks (see :mod:`ckptsurgery.execute.cluster`); the report is the same.

    >>> report = diff("runs/a/", "runs/b/")   # doctest: +SKIP
    >>> report.identical                       # doctest: +SKIP
    True
    """
    ca, cb = open_checkpoint(a), open_checkpoint(b)
    report = DiffReport(ca.prefix, cb.prefix)
    names_a, names_b = set(ca.names), set(cb.names)
    report.only_in_a = sorted(names_a - names_b)
    report.only_in_b = sorted(names_b - names_a)
    common = sorted(names_a & names_b)
    bar = progress_bar(sum(ca.info(n).nbytes for n in common) if values else 0, progress, "comparing")
    remote: dict[str, ValueDiff | None] = {}
    if values and (cluster is not None or scheduler is not None):
        from ..execute.cluster import map_groups, name_groups
        from ..options import DEFAULT_MEMORY_BUDGET
        from ..text.sizes import parse_size

        same = [(n, ca.info(n).nbytes) for n in common
                if (ca.info(n).dtype, ca.info(n).shape) == (cb.info(n).dtype, cb.info(n).shape)]
        groups = [(ca.prefix, cb.prefix, tuple(names), atol)
                  for names in name_groups(same, parse_size(DEFAULT_MEMORY_BUDGET))]
        results = map_groups(cluster, scheduler, diff_group, groups,
                             lambda group, _: bar.update(sum(ca.info(n).nbytes for n in group[2])), ca.prefix)
        remote = {name: d for group, diffs in zip(groups, results) for name, d in zip(group[2], diffs)}
    for name in common:
        ia, ib = ca.info(name), cb.info(name)
        bar.update(ia.nbytes if values and name not in remote else 0)
        if (ia.dtype, ia.shape) != (ib.dtype, ib.shape):
            report.dtype_or_shape.append(
                {"name": name, "a": f"{ia.dtype}{list(ia.shape)}", "b": f"{ib.dtype}{list(ib.shape)}"})
            continue
        if not values:
            report.equal += 1
            continue
        difference = remote[name] if name in remote else _value_diff(name, ca.read(name), cb.read(name), atol)
        if difference is None:
            report.equal += 1
        else:
            report.values.append(difference)
    bar.close()
    return report
