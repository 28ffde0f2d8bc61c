"""``inspect``: what is in a checkpoint, from its index alone."""

from __future__ import annotations

from collections import defaultdict

from ..text.display import display_name
from ..text.sizes import format_size
from ..text.table import table_lines
from ..io.index import no_gc_pauses
from ..io.reader import Checkpoint


def summary_json(ckpt: Checkpoint) -> dict:
    """The ``--json`` form: one dict a script can rely on."""
    return {
        "prefix": ckpt.prefix,
        "kind": ckpt.kind,
        "tensors": [t.to_json() for t in ckpt],
        "num_tensors": len(ckpt),
        "total_bytes": ckpt.total_bytes,
    }


def render_table(ckpt: Checkpoint) -> str:
    # One row per tensor (200k in real checkpoints): shapes and sizes repeat, so each
    # distinct one is formatted once.
    shapes: dict[tuple[int, ...], str] = {}
    sizes: dict[int, str] = {}
    rows = []
    with no_gc_pauses():  # 200k row tuples, no cycles
        for t in ckpt:
            shape = shapes.get(t.shape)
            if shape is None:
                shape = shapes[t.shape] = str(list(t.shape))
            size = sizes.get(t.nbytes)
            if size is None:
                size = sizes[t.nbytes] = format_size(t.nbytes)
            rows.append((display_name(t.name), t.dtype, shape, size))
        lines = table_lines(("name", "dtype", "shape", "size"), rows, right={3})
    lines.append(_totals(ckpt))
    return "\n".join(lines)


def scope_totals(ckpt: Checkpoint, depth: int | None = None) -> dict[str, tuple[int, int]]:
    """Bytes and tensor counts per scope prefix (``a``, ``a/b``, ...), up to ``depth`` levels."""
    # Sum per parent scope first (a handful of scopes hold 200k scalars), then spread each
    # parent's sums over its ancestors: work per distinct scope, not per tensor and level.
    per_parent: dict[str, list[int]] = {}
    for t in ckpt:
        # TF2 keys end in /.ATTRIBUTES/VARIABLE_VALUE: the variable, not a scope, is the leaf.
        parent = t.name.split("/.ATTRIBUTES/")[0].rpartition("/")[0]
        sums = per_parent.get(parent)
        if sums is None:
            sums = per_parent[parent] = [0, 0]
        sums[0] += t.nbytes
        sums[1] += 1
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for parent, (nbytes, count) in per_parent.items():
        parts = parent.split("/") if parent else []
        if depth is not None:
            parts = parts[:depth]
        totals["/"][0] += nbytes
        totals["/"][1] += count
        for i in range(1, len(parts) + 1):
            scope = "/".join(parts[:i]) + "/"
            totals[scope][0] += nbytes
            totals[scope][1] += count
    return {k: (v[0], v[1]) for k, v in sorted(totals.items())}


def render_tree(ckpt: Checkpoint, depth: int | None = None) -> str:
    lines = []
    for scope, (nbytes, count) in scope_totals(ckpt, depth).items():
        level = 0 if scope == "/" else scope.count("/")
        label = scope if scope == "/" else display_name(scope.rstrip("/").split("/")[-1]) + "/"
        lines.append(f"{'  ' * level}{label:<{max(1, 48 - 2 * level)}} {format_size(nbytes):>10}  {count:>6} tensors")
    lines.append(_totals(ckpt))
    return "\n".join(lines)


def _totals(ckpt: Checkpoint) -> str:
    return f"{len(ckpt)} tensors, {format_size(ckpt.total_bytes)} ({ckpt.kind}) at {display_name(ckpt.prefix)}"
