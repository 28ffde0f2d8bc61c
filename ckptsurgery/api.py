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
from typing import Any, Callable, Mapping, Sequence

from .errors import (BadCheckpointError, CkptSurgeryError, NonFiniteError, OutputError, PlanError, RuleError,
                     UsageError)
from .execute.cluster import write_or_plan  # the executor's, with the batches on a Dask cluster when asked
from .execute.executor import WriteOptions, WriteResult
from .io.publish.clean import CleanAction
from .io.publish.clean import clean as _clean
from .io.publish.clean import clean_actions as _clean_actions
from .io.reader import Checkpoint, TensorInfo, open_checkpoint
from .io.resolve import last_checkpoints
from .options import DEFAULT_MEMORY_BUDGET, check_write_options
from .plan.average import plan_average
from .plan.entries import Plan, plan_edit
from .plan.merge import MethodRule, Take, plan_merge
from .plan.rules import Cast, Drop, DropOptimizer, Keep, Rename, Resize, Rule
from .plan.transfer import TransferReport, load_name_map, plan_transfer, transfer_into_variables, variables_by_key
from .report.inspect import summary_json
from .report.verify import ONLY_OTHER, TensorCheck, VerifyReport
from .report.verify import verify as _verify
from .text.progress import progress_bar

PathLike = str | os.PathLike | Checkpoint

__all__ = [
    # the commands, one per CLI command
    "inspect", "copy", "edit", "transfer", "diff", "average", "merge", "verify", "clean", "clean_actions", "run_recipe",
    # opening inputs, planning without writing, live-model transfer
    "open_checkpoint", "last_checkpoints", "load_name_map", "plan_edit", "plan_transfer", "plan_average", "plan_merge",
    "transfer_into_variables", "variables_by_key",
    # the data types they take and return
    "Checkpoint", "TensorInfo", "Rule", "Rename", "Keep", "Drop", "DropOptimizer", "Cast", "Resize", "Take", "MethodRule",
    "Plan", "WriteOptions", "WriteResult", "TransferReport", "VerifyReport", "TensorCheck", "CleanAction",
    # the errors they raise
    "CkptSurgeryError", "UsageError", "RuleError", "PlanError", "BadCheckpointError", "OutputError", "NonFiniteError",
]


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
    crc_check: bool = True, byte_path: bool | None = None, cluster: str | None = None, scheduler: str | None = None,
) -> WriteResult | Plan:
    """Rewrite ``src`` at ``dst`` unchanged, in streaming shards.

    Args:
        src: the checkpoint to copy (prefix, folder, state file, any of its files, or a Checkpoint).
        dst: destination prefix; an existing folder or a path ending in ``/`` gets SRC's base name.
        dry_run: return the :class:`Plan` without reading tensor data or writing anything.
        memory_budget, workers, force, verify, fsync, progress, crc_check, byte_path, cluster, scheduler: the
            write options (see :data:`ckptsurgery.options.WRITE_OPTIONS`), the same names as the
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
                 progress=progress, crc_check=crc_check, byte_path=byte_path, cluster=cluster,
                 scheduler=scheduler)
    check_write_options(write)
    return write_or_plan(plan_edit(open_checkpoint(src), []), dst, dry_run, **write)


def edit(
    src: PathLike, dst: str | os.PathLike, rules: Sequence[Rule], *, dry_run: bool = False,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET, workers: int = 1, force: bool = False, verify: bool = False,
    fsync: bool = True, progress: bool | None = None,
    crc_check: bool = True, byte_path: bool | None = None, cluster: str | None = None, scheduler: str | None = None,
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
                 progress=progress, crc_check=crc_check, byte_path=byte_path, cluster=cluster,
                 scheduler=scheduler)
    check_write_options(write)
    return write_or_plan(plan_edit(open_checkpoint(src), list(rules)), dst, dry_run, **write)


def transfer(
    old: PathLike, new: Any, dst: str | os.PathLike | None = None, *, rules: Sequence[Rule] = (),
    name_map: dict[str, str] | None = None, strict: bool = False, skip_optimizer: bool = False,
    old_step_counters: bool = False, dry_run: bool = False, memory_budget: int | str = DEFAULT_MEMORY_BUDGET, workers: int = 1, force: bool = False,
    verify: bool = False, fsync: bool = True, progress: bool | None = None,
    crc_check: bool = True, byte_path: bool | None = None, cluster: str | None = None, scheduler: str | None = None,
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
    write = dict(memory_budget=memory_budget, workers=workers, force=force, verify=verify, fsync=fsync,
                 progress=progress, crc_check=crc_check, byte_path=byte_path, cluster=cluster,
                 scheduler=scheduler)
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


def diff(a: PathLike, b: PathLike, *, atol: float = 0.0, values: bool = True, progress: bool | None = False,
         cluster: str | None = None, scheduler: str | None = None):
    """Compare two checkpoints tensor by tensor.

    Args:
        a, b: the checkpoints.
        atol: values within ``atol`` count as equal (0: bit-exact).
        values: also compare values (False: names, dtypes and shapes only; no data read).
        progress: a bar on stderr (None: only when stderr is a terminal).
        cluster, scheduler: compare the values by groups as Dask tasks (see :mod:`ckptsurgery.execute.cluster`).

    Returns:
        A :class:`ckptsurgery.report.diff.DiffReport` (``.identical``, ``.render()``, ``.to_json()``).

    Raises:
        BadCheckpointError: either input is not a readable checkpoint.
    """
    from .report.diff import diff as _diff

    _check_cluster(cluster, scheduler)
    return _diff(a, b, atol=atol, values=values, progress=progress, cluster=cluster, scheduler=scheduler)


def verify(path: PathLike, against: PathLike | None = None, *, progress: bool | None = False,
           on_tensor: Callable[[TensorCheck], None] | None = None, cluster: str | None = None,
           scheduler: str | None = None, memory_budget: int | str = DEFAULT_MEMORY_BUDGET) -> VerifyReport:
    """Validate ``path``'s index and read every tensor (each CRC32C is checked).

    Args:
        path: the checkpoint.
        against: also compare names, dtypes, shapes and values (bit-exact, NaN-aware) with this one.
        progress: a bar on stderr (None: only when stderr is a terminal).
        on_tensor: called with each tensor's :class:`TensorCheck` as it is checked.
        cluster, scheduler: check the tensors by groups as Dask tasks (see :mod:`ckptsurgery.execute.cluster`).
        memory_budget: bytes held at a time per tensor (V2 bundles are streamed in pieces; a V1 file's
            tensors, or all with ``CKPTSURGERY_BYTE_PATH=0``, are read whole through TensorFlow).

    Returns:
        A :class:`VerifyReport` (``.ok``, ``.render()``, ``.to_json()``, ``.exit_code``); a tensor
        that fails to read is reported as ``bad`` and the others are still checked.

    Raises:
        BadCheckpointError: the index or the layout of the data shards is broken.
    """
    _check_cluster(cluster, scheduler)
    check_write_options(dict(memory_budget=memory_budget))
    ckpt = open_checkpoint(path)
    with progress_bar(ckpt.total_bytes, progress, "verifying") as bar:
        def checked(check: TensorCheck) -> None:
            bar.update(0 if check.status == ONLY_OTHER else check.nbytes)
            if on_tensor is not None:
                on_tensor(check)

        return _verify(ckpt, against=against, on_tensor=checked, cluster=cluster, scheduler=scheduler,
                       memory_budget=memory_budget)


def _check_cluster(cluster: str | None, scheduler: str | None) -> None:
    """verify/diff take the write options' ``cluster`` and ``scheduler``, checked the same way."""
    check_write_options(dict(cluster=cluster, scheduler=scheduler))
    from .execute.cluster import wanted

    wanted(cluster, scheduler)


def clean_actions(folder: str | os.PathLike, *, only_dead: bool = True) -> list[CleanAction]:
    """Recover ``folder`` after crashed runs (``ckptsurgery clean``); returns what was done.

    Args:
        folder: the folder holding the destinations of crashed runs.
        only_dead: leave staging folders whose process is still running.

    Returns:
        One :class:`CleanAction` per thing done or left (``kept-previous``: a previous checkpoint
        that could not be put back, still in its staging folder's ``previous/``).

    Raises:
        OutputError: ``folder`` is not a folder.
    """
    return _clean_actions(folder, only_dead=only_dead)


def clean(folder: str | os.PathLike, *, only_dead: bool = True) -> list[str]:
    """Like :func:`clean_actions`, returning only the paths removed."""
    return _clean(folder, only_dead=only_dead)


def run_recipe(
    path: str | os.PathLike, *, dry_run: bool = False, memory_budget: int | str | None = None,
    workers: int | None = None, force: bool | None = None, verify: bool | None = None, fsync: bool | None = None,
    progress: bool | None = None, crc_check: bool | None = None, byte_path: bool | None = None,
    cluster: str | None = None, scheduler: str | None = None,
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
    from .recipe import parse_recipe

    given = dict(memory_budget=memory_budget, workers=workers, force=force, verify=verify, fsync=fsync,
                 crc_check=crc_check, byte_path=byte_path, progress=progress, cluster=cluster, scheduler=scheduler)
    call = parse_recipe(path, dry_run=dry_run, overrides={k: v for k, v in given.items() if v is not None})
    command = {"edit": edit, "transfer": transfer, "average": average, "merge": merge}[call.command]
    outcome = command(*call.args, dry_run=dry_run, **call.kwargs)
    if call.command != "transfer":
        return outcome, None
    result, report = outcome
    if call.report_path and not dry_run:
        report.write(call.report_path)
    return result, report


def average(
    checkpoints: Sequence[PathLike],
    out: str | os.PathLike,
    *,
    weights: Sequence[float] | None = None,
    ema: float | None = None,
    int_policy: str = "last",
    keep_optimizer: bool = False,
    intersection: bool = False,
    allow_nonfinite: bool = False,
    dry_run: bool = False,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    workers: int = 1,
    force: bool = False,
    verify: bool = False,
    fsync: bool = True,
    progress: bool | None = None,
    crc_check: bool = True,
    byte_path: bool | None = None,
    cluster: str | None = None,
    scheduler: str | None = None,
) -> WriteResult | Plan:
    """Average ``checkpoints`` into ``out``, streaming (see :func:`ckptsurgery.plan.average.plan_average`).

    For the last N saves of a run::

        average(last_checkpoints("runs/bert/", 5), "runs/bert-avg/model.ckpt")

    Args:
        checkpoints: the inputs, oldest first (sources ``ckpt1`` ... ``ckptN``).
        out: destination prefix.
        weights: one non-negative weight per input (a weighted mean); None: a plain mean.
        ema: an exponential-moving-average decay in [0, 1) instead of ``weights``.
        int_policy: non-floating tensors are copied from the ``"last"`` or ``"first"`` input, or ``"error"``.
        keep_optimizer: average optimizer state too (dropped by default).
        intersection: average only the names all inputs share (else a missing name is a PlanError).
        allow_nonfinite: write a result with NaN or Inf instead of raising NonFiniteError.
        dry_run, memory_budget, workers, force, verify, fsync, progress, crc_check, byte_path: as for :func:`copy`.

    Returns:
        The :class:`WriteResult`, or the :class:`Plan` with ``dry_run``.

    Raises:
        TypeError, UsageError: a misspelled or mistyped option or weight, before anything happens.
        PlanError: the inputs differ in names, dtypes or shapes.
        NonFiniteError: a result holds NaN or Inf (without ``allow_nonfinite``); nothing is published.
        BadCheckpointError, OutputError: as for :func:`copy`.
    """
    options = check_write_options(dict(memory_budget=memory_budget, workers=workers, force=force, verify=verify,
                                       fsync=fsync, progress=progress,
                                       crc_check=crc_check, byte_path=byte_path, cluster=cluster,
                                       scheduler=scheduler))
    plan = plan_average(checkpoints, weights=weights, ema=ema, int_policy=int_policy,
                        keep_optimizer=keep_optimizer, intersection=intersection)
    return write_or_plan(plan, out, dry_run, allow_nonfinite=allow_nonfinite, **options)


def merge(
    sources: Mapping[str, PathLike],
    out: str | os.PathLike,
    *,
    takes: Sequence[Take],
    methods: Sequence[MethodRule] = (),
    base: str | None = None,
    seed: int = 0,
    keep_optimizer: bool = False,
    graph_from: str | None = None,
    allow_nonfinite: bool = False,
    dry_run: bool = False,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    workers: int = 1,
    force: bool = False,
    verify: bool = False,
    fsync: bool = True,
    progress: bool | None = None,
    crc_check: bool = True,
    byte_path: bool | None = None,
    cluster: str | None = None,
    scheduler: str | None = None,
) -> WriteResult | Plan:
    """Merge parts of several ``sources`` into ``out`` (see :func:`ckptsurgery.plan.merge.plan_merge`).

    Example: the encoder of ``a``, the decoder averaged from ``a`` and ``b``::

        merge({"a": "runs/a/", "b": "runs/b/"}, "merged/model.ckpt",
              takes=[Take("a", "."), Take("b", "^decoder/")],
              methods=[MethodRule("^decoder/", "linear", weights={"a": 0.3, "b": 0.7})])

    Args:
        sources: alias -> checkpoint.
        out: destination prefix.
        takes: which tensors to take from which source (and how to rename them).
        methods: how to combine output names that several sources give (first matching rule wins).
        base: the alias whose tensors methods that need a base subtract (task_arithmetic, ties, dare).
        seed: seed of randomised methods (each tensor gets its own, derived from its name).
        keep_optimizer: take optimizer state too (skipped by default).
        graph_from: the alias whose TF2 object graph to carry (default: the base, else the first take's).
        allow_nonfinite, dry_run, memory_budget, workers, force, verify, fsync, progress, crc_check,
            byte_path: as for :func:`average`.

    Returns:
        The :class:`WriteResult`, or the :class:`Plan` with ``dry_run``.

    Raises:
        TypeError, UsageError: a misspelled or mistyped option, an unknown alias or method.
        RuleError: a take or method rule matches nothing, or a method's parameters are invalid.
        PlanError: two sources give one name without a method rule, or inputs disagree in dtype or shape.
        NonFiniteError, BadCheckpointError, OutputError: as for :func:`average`.
    """
    options = check_write_options(dict(memory_budget=memory_budget, workers=workers, force=force, verify=verify,
                                       fsync=fsync, progress=progress,
                                       crc_check=crc_check, byte_path=byte_path, cluster=cluster,
                                       scheduler=scheduler))
    plan = plan_merge(sources, takes, methods=methods, base=base, seed=seed, keep_optimizer=keep_optimizer,
                      graph_from=graph_from)
    return write_or_plan(plan, out, dry_run, allow_nonfinite=allow_nonfinite, **options)
