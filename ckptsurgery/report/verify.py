"""``verify``: is every byte of a checkpoint readable and intact?

Two layers, both streaming (one tensor in memory at a time, two with
``against``):

1. the index, in pure Python (:func:`ckptsurgery.io.index.validate_checkpoint`
   via :class:`~ckptsurgery.io.reader.Checkpoint`): the table's block checksums,
   every entry sane, every data shard present, every entry inside its shard.
   A failure here means nothing can be trusted, so it raises
   :class:`~ckptsurgery.errors.BadCheckpointError` (exit 3) with one line;
2. every tensor, read through TensorFlow's own reader, which checks each
   tensor's CRC32C.  A failure here is recorded per tensor and the others
   are still checked, so the report names every bad tensor.

With ``against``, the values are also compared with another checkpoint:
names, dtypes, shapes, and values bit for bit (a NaN equals a NaN at the same
place, whatever its payload).

Example::

    >>> report = verify("runs/bert/model.ckpt-1000")       # doctest: +SKIP
    >>> report.ok, len(report.bad)                          # doctest: +SKIP
    (True, 0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..text.display import display_name
from ..errors import EXIT_BAD_INPUT, EXIT_DIFFERENT, EXIT_OK, BadCheckpointError
from ..text.sizes import format_size
from ..text.table import table_lines
from ..values import count_differences
from ..io.reader import OBJECT_GRAPH_KEY, Checkpoint, open_checkpoint

#: Per-tensor statuses.
OK = "ok"
BAD = "bad"  # unreadable: checksum mismatch, truncated, ...
DIFFERENT = "different"  # readable, but differs from ``against``
ONLY_HERE = "only-here"  # not in ``against``
ONLY_OTHER = "only-in-other"  # in ``against`` only


@dataclass
class TensorCheck:
    """The verdict on one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    status: str = OK
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes,
                "status": self.status, "detail": self.detail}


@dataclass
class VerifyReport:
    """Per-tensor results of :func:`verify`; ``exit_code`` is what the CLI returns."""

    prefix: str
    against: str | None = None
    tensors: list[TensorCheck] = field(default_factory=list)

    @property
    def bad(self) -> list[TensorCheck]:
        return [t for t in self.tensors if t.status == BAD]

    @property
    def differences(self) -> list[TensorCheck]:
        return [t for t in self.tensors if t.status in (DIFFERENT, ONLY_HERE, ONLY_OTHER)]

    @property
    def ok(self) -> bool:
        """Every tensor read back intact (and, with ``against``, equal)."""
        return not self.bad and not self.differences

    @property
    def exit_code(self) -> int:
        if self.bad:
            return EXIT_BAD_INPUT
        if self.differences:
            return EXIT_DIFFERENT
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix, "against": self.against, "ok": self.ok,
            "num_tensors": sum(t.status != ONLY_OTHER for t in self.tensors),
            "bad": [t.name for t in self.bad],
            "differences": [t.name for t in self.differences],
            "tensors": [t.to_json() for t in self.tensors],
        }

    def summary(self) -> str:
        n = sum(t.status != ONLY_OTHER for t in self.tensors)
        text = f"{n} tensors: {n - len(self.bad)} readable, {len(self.bad)} bad"
        if self.against is not None:
            text += f"; against {self.against}: {len(self.differences)} differences"
        return text

    def render(self) -> str:
        """A table, one row per tensor, then one line per problem, then a summary."""
        rows = [(display_name(t.name), t.dtype, str(list(t.shape)) if t.status != ONLY_OTHER else "", format_size(t.nbytes),
                 t.status) for t in self.tensors]
        lines = table_lines(("name", "dtype", "shape", "size", "status"), rows, right={3})
        for t in self.tensors:
            if t.status != OK:
                lines.append(f"{t.status.upper()}: {t.name}: {t.detail}")
        lines.append(self.summary())
        return "\n".join(display_name(line) for line in lines)  # one line per item: names are input

    def error_line(self) -> str | None:
        """One line for stderr naming what is wrong, or None when all is well."""
        if self.bad:
            names = ", ".join(repr(t.name) for t in self.bad[:5]) + (" ..." if len(self.bad) > 5 else "")
            first = self.bad[0]
            return (f"{self.prefix}: {len(self.bad)} bad tensor{'s' if len(self.bad) != 1 else ''}: {names} "
                    f"(first: {first.detail})")
        if self.differences:
            names = ", ".join(repr(t.name) for t in self.differences[:5]) + (" ..." if len(self.differences) > 5 else "")
            return f"{self.prefix}: differs from {self.against} in {len(self.differences)} tensors: {names}"
        return None


def verify(
    path: str | os.PathLike | Checkpoint,
    against: str | os.PathLike | Checkpoint | None = None,
    *,
    on_tensor: Callable[[TensorCheck], None] | None = None,
    cluster: str | None = None,
    scheduler: str | None = None,
) -> VerifyReport:
    """Validate ``path``'s index, read every tensor (TF checks each CRC32C).

    Raises :class:`BadCheckpointError` when the index or the layout of the
    data shards is broken (nothing can be read reliably); a tensor that fails
    to read is reported as ``bad`` in the returned :class:`VerifyReport` and
    the others are still checked.  With ``against``, also compare names,
    dtypes, shapes and values (bit-exact, NaN-aware) with that checkpoint.
    ``on_tensor`` is called after each tensor (for progress).  ``cluster`` /
    ``scheduler``: the tensors are checked by groups as Dask tasks (see
    :mod:`ckptsurgery.execute.cluster`); the report is the same.
    """
    ckpt = open_checkpoint(path)
    other = open_checkpoint(against) if against is not None else None
    report = VerifyReport(ckpt.prefix, other.prefix if other is not None else None)
    notify = on_tensor or (lambda check: None)
    if cluster is not None or scheduler is not None:
        from ..execute.cluster import map_groups, name_groups
        from ..options import DEFAULT_MEMORY_BUDGET
        from ..text.sizes import parse_size

        groups = [(ckpt.prefix, other.prefix if other is not None else None, tuple(names))
                  for names in name_groups([(t.name, t.nbytes) for t in ckpt], parse_size(DEFAULT_MEMORY_BUDGET))]

        def group_done(group: Any, checks: list[TensorCheck]) -> None:
            for check in checks:  # the bar advances as groups complete
                notify(check)

        for checks in map_groups(cluster, scheduler, check_group, groups, group_done, ckpt.prefix):
            report.tensors.extend(checks)
    else:
        for info in ckpt:
            check = check_tensor(ckpt, other, info.name)
            report.tensors.append(check)
            notify(check)
    if other is not None:
        for info in other:
            if info.name not in ckpt:
                check = TensorCheck(info.name, info.dtype, info.shape, info.nbytes, ONLY_OTHER,
                                    f"only in {other.prefix}")
                report.tensors.append(check)
                notify(check)
    return report


def check_tensor(ckpt: Checkpoint, other: Checkpoint | None, name: str) -> TensorCheck:
    """Read one tensor (its CRC32C checked), check it, compare it with ``other``'s."""
    info = ckpt.info(name)
    check = TensorCheck(info.name, info.dtype, info.shape, info.nbytes)
    try:
        value = ckpt.read(info.name)
    except BadCheckpointError as exc:
        if exc.tensor is None:
            raise  # the checkpoint as a whole cannot be opened
        check.status, check.detail = BAD, exc.detail
        return check
    if info.name == OBJECT_GRAPH_KEY:
        _check_object_graph(check, value, ckpt)
    if other is not None and check.status == OK:
        _compare(check, value, other)
    return check


def check_group(group: tuple[str, str | None, tuple[str, ...]]) -> list[TensorCheck]:
    """:func:`check_tensor` for a group of names, where a cluster task runs (sources reopened there)."""
    prefix, against, names = group
    ckpt = open_checkpoint(prefix)
    other = open_checkpoint(against) if against is not None else None
    return [check_tensor(ckpt, other, name) for name in names]


def _check_object_graph(check: TensorCheck, value: np.ndarray, ckpt: Checkpoint) -> None:
    """The TF2 object graph is read like any tensor, then decoded and checked against the bundle."""
    from ..plan.objectgraph import describe_problems, graph_bytes_of, object_graph_problems

    graph_bytes = graph_bytes_of(value)
    problems = (["is not a scalar string tensor"] if graph_bytes is None
                else object_graph_problems(graph_bytes, {t.name for t in ckpt}))
    if problems:
        check.status, check.detail = BAD, describe_problems(problems)


def _compare(check: TensorCheck, value: np.ndarray, other: Checkpoint) -> None:
    if check.name not in other:
        check.status, check.detail = ONLY_HERE, f"not in {other.prefix}"
        return
    info = other.info(check.name)
    if (info.dtype, tuple(info.shape)) != (check.dtype, tuple(check.shape)):
        check.status = DIFFERENT
        check.detail = f"{check.dtype}{list(check.shape)} here, {info.dtype}{list(info.shape)} in other"
        return
    try:
        theirs = other.read(check.name)
    except BadCheckpointError as exc:
        # The other side is unreadable: a difference, not a fault of this checkpoint.
        check.status, check.detail = DIFFERENT, f"unreadable in {other.prefix}: {exc.detail}"
        return
    differing = count_differences(value, theirs)
    if differing:
        check.status = DIFFERENT
        check.detail = f"{differing} of {max(value.size, 1)} elements differ"
