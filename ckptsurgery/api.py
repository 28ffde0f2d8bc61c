"""The Python API: one function per CLI command, same names, same options.

Every function takes paths (or opened :class:`Checkpoint` objects) and
keyword options that mirror the command-line flags; ``dry_run=True``
returns the :class:`Plan` without reading tensor data or writing anything.

Example::

    import ckptsurgery as cs

    cs.inspect("runs/old/")["total_bytes"]
    cs.edit("runs/old/", "runs/slim/model.ckpt",
            rules=[cs.DropOptimizer(), cs.Rename("^bert/", "encoder/"),
                   cs.Cast("float32", "bfloat16")])
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from .errors import UsageError
from .execute import WriteResult, write_or_plan
from .inspection import summary_json
from .plan import Plan, plan_edit
from .rules import Rule
from .source import Checkpoint, open_checkpoint

PathLike = str | os.PathLike | Checkpoint


def inspect(path: PathLike) -> dict:
    """Names, dtypes, shapes and byte sizes of every tensor; reads only the index.

    >>> info = inspect("runs/old/")                      # doctest: +SKIP
    >>> info["kind"], info["num_tensors"]                # doctest: +SKIP
    ('tf1-name', 1204)
    """
    return summary_json(open_checkpoint(path))


def copy(src: PathLike, dst: str | os.PathLike, *, dry_run: bool = False, **options) -> WriteResult | Plan:
    """Rewrite ``src`` at ``dst`` unchanged, in streaming shards.

    Options are those of :class:`WriteOptions` (``memory_budget``, ``force``,
    ``workers``, ``progress``, ``verify``, ``durable``).
    """
    return write_or_plan(plan_edit(open_checkpoint(src), []), dst, dry_run, **options)


def edit(
    src: PathLike, dst: str | os.PathLike, rules: Sequence[Rule], *, dry_run: bool = False, **options
) -> WriteResult | Plan:
    """Apply ``rules`` (Rename, Keep, Drop, DropOptimizer, Cast, Resize) in order, in one pass.

    Raises :class:`RuleError` before anything is read when a rule matches
    nothing, and :class:`PlanError` when two tensors would share an output name.
    """
    return write_or_plan(plan_edit(open_checkpoint(src), list(rules)), dst, dry_run, **options)


def transfer(
    old: PathLike, new: Any, dst: str | os.PathLike | None = None, *, rules: Sequence[Rule] = (),
    name_map: dict[str, str] | None = None, strict: bool = False, skip_optimizer: bool = False,
    old_step_counters: bool = False, dry_run: bool = False, **options,
):
    """Give the new model OLD's values where names, shapes and dtypes match.

    ``new`` is either a checkpoint of the new model as initialized, and then
    the result is written to ``dst`` with exactly NEW's variable set; or the
    live model itself (a list of ``tf.Variable``s, a ``tf.Module`` or a Keras
    model), and then values are assigned into it one variable at a time and
    ``dst`` must be None.  Returns ``(result, report)``: ``result`` is the
    :class:`WriteResult`, the :class:`Plan` (``dry_run``), or None for a live
    target; ``report`` is the :class:`TransferReport`.

    Step counters (``global_step``, ``save_counter``, optimizer iterations)
    keep NEW's value, since a warm start is a new run;
    ``old_step_counters=True`` takes OLD's (a resumed schedule).
    """
    from .warmstart import plan_transfer, transfer_into_variables

    if not isinstance(new, (str, os.PathLike, Checkpoint)):
        if dst is not None:
            raise UsageError("transfer into a live model takes no destination (dst must be None)")
        report = transfer_into_variables(open_checkpoint(old), new, rules=rules, name_map=name_map, strict=strict,
                                         skip_optimizer=skip_optimizer, old_step_counters=old_step_counters)
        return None, report
    if dst is None:
        raise UsageError("transfer into a checkpoint needs a destination (dst)")
    plan, report = plan_transfer(open_checkpoint(old), open_checkpoint(new), rules=rules, name_map=name_map,
                                 strict=strict, skip_optimizer=skip_optimizer, old_step_counters=old_step_counters)
    return write_or_plan(plan, dst, dry_run, **options), report


def diff(a: PathLike, b: PathLike, *, atol: float = 0.0, values: bool = True):
    """Compare two checkpoints tensor by tensor; see :class:`ckptsurgery.comparison.DiffReport`."""
    from .comparison import diff as _diff

    return _diff(a, b, atol=atol, values=values)


def run_recipe(path: str | os.PathLike, *, dry_run: bool = False, **options):
    """Run a YAML recipe; returns ``(WriteResult or Plan, report or None)``."""
    from .recipe import run_recipe as _run

    return _run(path, dry_run=dry_run, overrides=options)


# average and merge live beside their planner; re-exported so the API mirrors the CLI in one place.
from .batch import average, merge  # noqa: E402,F401
