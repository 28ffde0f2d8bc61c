"""The Python API: one function per CLI command, same names, same options.

Every function takes paths (or opened :class:`Checkpoint` objects) and
explicit keyword options with the same names as the command-line flags and
a recipe's keys (``memory_budget``, ``workers``, ``force``, ``verify``,
``fsync``, ``progress``; see :mod:`ckptsurgery.options`).  A misspelled
option is a ``TypeError`` naming it and a mistyped one a :class:`UsageError`,
both before anything is read or written, dry runs included.  ``dry_run=True``
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
from .execute.executor import WriteResult, write_or_plan
from .options import check_write_options
from .report.inspect import summary_json
from .plan.entries import Plan, plan_edit
from .plan.rules import Rule
from .io.reader import Checkpoint, open_checkpoint
from .io.shard_writer import DEFAULT_MEMORY_BUDGET

PathLike = str | os.PathLike | Checkpoint


def inspect(path: PathLike) -> dict:
    """Names, dtypes, shapes and byte sizes of every tensor; reads only the index.

    >>> info = inspect("runs/old/")                      # doctest: +SKIP
    >>> info["kind"], info["num_tensors"]                # doctest: +SKIP
    ('tf1-name', 1204)
    """
    return summary_json(open_checkpoint(path))


def copy(
    src: PathLike, dst: str | os.PathLike, *, dry_run: bool = False, memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    workers: int = 1, force: bool = False, verify: bool = False, fsync: bool = True, progress: bool | None = None,
    crc_check: bool = True, byte_path: bool | None = None,
) -> WriteResult | Plan:
    """Rewrite ``src`` at ``dst`` unchanged, in streaming shards.

    Args:
        src: the checkpoint to copy (prefix, folder, state file, any of its files, or a Checkpoint).
        dst: destination prefix; an existing folder or a path ending in ``/`` gets SRC's base name.
        dry_run: return the :class:`Plan` without reading tensor data or writing anything.
        memory_budget, workers, force, verify, fsync, progress, crc_check, byte_path: the write options
            (see :data:`ckptsurgery.options.WRITE_OPTIONS`), the same names as the
            ``--memory-budget``... flags and a recipe's ``options:``.

    Returns:
        The :class:`WriteResult`, or the :class:`Plan` with ``dry_run``.

    Raises:
        TypeError: an option this function does not take (a typo), before anything happens.
        UsageError: an option of the wrong type (``force="false"``), before anything happens.
        BadCheckpointError: SRC is not a readable checkpoint (or its object graph is broken).
        OutputError: DST exists (without ``force``), is an input, or cannot be written.
    """
    write = dict(memory_budget=memory_budget, workers=workers, force=force, verify=verify, fsync=fsync,
                 progress=progress, crc_check=crc_check, byte_path=byte_path)
    check_write_options(write)
    return write_or_plan(plan_edit(open_checkpoint(src), []), dst, dry_run, **write)


def edit(
    src: PathLike, dst: str | os.PathLike, rules: Sequence[Rule], *, dry_run: bool = False,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET, workers: int = 1, force: bool = False, verify: bool = False,
    fsync: bool = True, progress: bool | None = None,
    crc_check: bool = True, byte_path: bool | None = None,
) -> WriteResult | Plan:
    """Apply ``rules`` (Rename, Keep, Drop, DropOptimizer, Cast, Resize) in order, in one pass.

    Args:
        src, dst, dry_run, memory_budget, workers, force, verify, fsync, progress: as for :func:`copy`.
        rules: the rules, applied in order to the running list of output names.

    Returns:
        The :class:`WriteResult`, or the :class:`Plan` with ``dry_run``.

    Raises:
        TypeError, UsageError: a misspelled or mistyped option, before anything happens.
        RuleError: a rule matches nothing (before anything is read).
        PlanError: two tensors would share an output name.
        BadCheckpointError, OutputError: as for :func:`copy`.
    """
    write = dict(memory_budget=memory_budget, workers=workers, force=force, verify=verify, fsync=fsync,
                 progress=progress, crc_check=crc_check, byte_path=byte_path)
    check_write_options(write)
    return write_or_plan(plan_edit(open_checkpoint(src), list(rules)), dst, dry_run, **write)


def transfer(
    old: PathLike, new: Any, dst: str | os.PathLike | None = None, *, rules: Sequence[Rule] = (),
    name_map: dict[str, str] | None = None, strict: bool = False, skip_optimizer: bool = False,
    old_step_counters: bool = False, dry_run: bool = False, memory_budget: int | str = DEFAULT_MEMORY_BUDGET, workers: int = 1, force: bool = False,
    verify: bool = False, fsync: bool = True, progress: bool | None = None,
    crc_check: bool = True, byte_path: bool | None = None,
):
    """Give the new model OLD's values where names, shapes and dtypes match.

    Args:
        old: the checkpoint to take values from.
        new: a checkpoint of the new model as initialized (the result is written to ``dst`` with
            exactly NEW's variable set), or the live model itself (a list of ``tf.Variable``s, a
            ``tf.Module`` or a Keras model: values are assigned into it one variable at a time and
            ``dst`` must be None).
        dst: destination prefix (None for a live target).
        rules: Rename rules applied to OLD's names before matching.
        name_map: old name -> new name, applied before ``rules``.
        strict: fail on a shape or dtype mismatch instead of keeping NEW's value.
        skip_optimizer: keep NEW's optimizer state.
        old_step_counters: take OLD's step counters (``global_step``, ``save_counter``, optimizer
            iterations). By default they keep NEW's value, since a warm start is a new run.
        dry_run, memory_budget, workers, force, verify, fsync, progress: as for :func:`copy`.

    Returns:
        ``(result, report)``: ``result`` is the :class:`WriteResult`, the :class:`Plan`
        (``dry_run``), or None for a live target; ``report`` is the :class:`TransferReport`.

    Raises:
        TypeError, UsageError: a misspelled or mistyped option, or a destination given for a live
            target (or missing for a checkpoint target).
        PlanError: a mismatch with ``strict``.
        BadCheckpointError, OutputError: as for :func:`copy`.
    """
    from .plan.transfer import plan_transfer, transfer_into_variables

    write = dict(memory_budget=memory_budget, workers=workers, force=force, verify=verify, fsync=fsync,
                 progress=progress, crc_check=crc_check, byte_path=byte_path)
    check_write_options(write)
    for flag, value in (("strict", strict), ("skip_optimizer", skip_optimizer), ("dry_run", dry_run)):
        if not isinstance(value, bool):
            raise UsageError(f"option {flag!r}: expected true or false, got {value!r}")
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
    return write_or_plan(plan, dst, dry_run, **write), report


def diff(a: PathLike, b: PathLike, *, atol: float = 0.0, values: bool = True):
    """Compare two checkpoints tensor by tensor.

    Args:
        a, b: the checkpoints.
        atol: values within ``atol`` count as equal (0: bit-exact).
        values: also compare values (False: names, dtypes and shapes only; no data read).

    Returns:
        A :class:`ckptsurgery.report.diff.DiffReport` (``.identical``, ``.render()``, ``.to_json()``).

    Raises:
        BadCheckpointError: either input is not a readable checkpoint.
    """
    from .report.diff import diff as _diff

    return _diff(a, b, atol=atol, values=values)


def run_recipe(
    path: str | os.PathLike, *, dry_run: bool = False, memory_budget: int | str | None = None,
    workers: int | None = None, force: bool | None = None, verify: bool | None = None, fsync: bool | None = None,
    progress: bool | None = None, crc_check: bool | None = None, byte_path: bool | None = None,
):
    """Run a YAML recipe.

    Args:
        path: the recipe file (its paths are relative to its folder).
        dry_run: return the plan; read no tensor data, write nothing.
        memory_budget, workers, force, verify, fsync, progress, crc_check, byte_path: write options that win over the
            recipe's ``options:``; None (the default) leaves the recipe's value (or the default).

    Returns:
        ``(WriteResult or Plan, TransferReport or None)``.

    Raises:
        TypeError: an option this function does not take.
        UsageError: a malformed recipe (unknown key, wrong type, aliases, too big or too deep,
            not UTF-8) or a mistyped option, before anything is read.
        RuleError, PlanError, BadCheckpointError, OutputError: as for the action the recipe names.
    """
    from .recipe import run_recipe as _run

    given = dict(memory_budget=memory_budget, workers=workers, force=force, verify=verify, fsync=fsync,
                 crc_check=crc_check, byte_path=byte_path)
    overrides = {k: v for k, v in given.items() if v is not None}
    if progress is not None:
        overrides["progress"] = progress
    return _run(path, dry_run=dry_run, overrides=check_write_options(overrides))


# average and merge live beside their planner; re-exported so the API mirrors the CLI in one place.
from .plan.batch import average, merge  # noqa: E402,F401
