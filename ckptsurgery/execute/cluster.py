"""Run a plan's groups as tasks on a Dask cluster (``--cluster local[:N]`` / ``--scheduler ADDRESS``).

The coordinator (this process) plans, takes the destination lock, creates
the staging folder, and submits one :class:`~ckptsurgery.execute.tasks.GroupTask`
per batch.  Workers read the sources and write their groups into the
staging folder (which must be on storage every worker reaches: beside the
destination, on its store for a ``gs://`` one, never the local temp folder); each task
returns a manifest of index entries.  The coordinator adopts the manifests
in plan order, merges and publishes exactly as the single-process path does
(:meth:`ShardWriter.finish`): workers never publish, and the coordinator
never holds tensor data.

A worker that dies mid-task is replaced and its task rerun by Dask; every
attempt writes under a fresh name inside the staging folder, so a half
written attempt never collides with its retry, and all attempts go with
the staging folder (at the end of the run, or by ``ckptsurgery clean``
after a crash).  A task that fails with an error (a corrupt input, a full
disk) is not retried: the run stops with that error's one line, nothing
published.

Dask is an optional extra (``pip install 'ckptsurgery[dask]'``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ..errors import CkptSurgeryError, OutputError, UsageError
from . import executor
from .tasks import GroupManifest, make_tasks, run_group_task

if TYPE_CHECKING:
    from ..io.shard_writer import ShardWriter
    from ..plan.entries import OutputEntry, Plan

INSTALL_HINT = "pip install 'ckptsurgery[dask]'"
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
_LOCAL = re.compile(r"local(?::([1-9][0-9]*))?")


def local_workers(spec: str) -> int:
    """Worker processes of ``local[:N]``: N, else one per core."""
    match = _LOCAL.fullmatch(spec)
    if match is None:
        raise UsageError(f"--cluster {spec!r}: expected local or local:N "
                         "(use --scheduler ADDRESS for a running cluster)")
    return int(match.group(1)) if match.group(1) else (os.cpu_count() or 1)


def wanted(cluster: str | None, scheduler: str | None) -> bool:
    """Whether the options ask for a cluster at all (no flag: the single-process path)."""
    if cluster is not None and scheduler is not None:
        raise UsageError("--cluster and --scheduler are exclusive: start a local cluster, or use a running one")
    if cluster is None and scheduler is None:
        return False
    _import_distributed()  # fail before anything is written when the extra is missing
    return True


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise UsageError("--cluster/--scheduler need Dask distributed, which is not installed: "
                         f"{INSTALL_HINT}") from None
    return distributed


@contextlib.contextmanager
def connect(cluster: str | None, scheduler: str | None) -> Iterator[Any]:
    """A ``distributed.Client``: to an embedded ``LocalCluster`` (``local[:N]``, started here,
    its dashboard address printed once on stderr), or to the scheduler at ``scheduler``
    (``""``: the address in ``$DASK_SCHEDULER_ADDRESS``)."""
    distributed = _import_distributed()
    if cluster is not None:
        n = local_workers(cluster)
        with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                      silence_logs=logging.CRITICAL) as local, distributed.Client(local) as client:
            pages = "" if importlib.util.find_spec("bokeh") else " (its status pages need: pip install bokeh)"
            print(f"ckptsurgery: local Dask cluster of {n} worker processes; dashboard {local.dashboard_link}{pages}",
                  file=sys.stderr, flush=True)
            yield client
        return
    address = scheduler or os.environ.get(SCHEDULER_ENV, "")
    if not address:
        raise UsageError(f"--scheduler: no address given and ${SCHEDULER_ENV} is not set")
    from .scheduler_probe import probe

    probe(address)  # a closed port fails now, not after Client's 30 s of retries
    try:
        client = distributed.Client(address, timeout=30)
    except (OSError, TimeoutError) as exc:
        reason = next(iter(str(exc).splitlines()), "") or type(exc).__name__
        raise OutputError(f"{address}: cannot reach the Dask scheduler: {reason}") from None
    with client:
        yield client


def gather_in_order(client: Any, function: Callable, items: Sequence[Any], on_done: Callable[[Any, Any], None],
                    what: str) -> list[Any]:
    """Run ``function`` on every item as Dask tasks; results in ``items``' order.

    ``on_done(item, result)`` is called as each completes (the progress bar).
    The first failure cancels the rest and is raised as one line: the task's
    own :class:`CkptSurgeryError`, or an :class:`OutputError` for a task whose
    workers kept dying.
    """
    distributed = _import_distributed()
    futures = client.map(function, list(items), pure=False)
    number = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    try:
        for future in distributed.as_completed(futures):
            i = number[future.key]
            results[i] = future.result()
            on_done(items[i], results[i])
    except CkptSurgeryError:
        client.cancel(futures)
        raise
    except distributed.scheduler.KilledWorker as exc:
        client.cancel(futures)
        raise OutputError(f"{what}: a Dask worker died on every attempt at a task ({str(exc).splitlines()[0][:200]}); "
                          "nothing published") from None
    except BaseException:
        client.cancel(futures)
        raise
    return results


def write_or_plan(plan: "Plan", dest: str | os.PathLike, dry_run: bool, **options: Any):
    """:func:`ckptsurgery.execute.executor.write_or_plan`, with the batches on the cluster that the
    ``cluster`` / ``scheduler`` options name (none: the single-process path, unchanged)."""
    clustered = not dry_run and wanted(options.get("cluster"), options.get("scheduler"))
    return executor.write_or_plan(plan, dest, dry_run, run_batches=run_on_cluster if clustered else None, **options)


def run_on_cluster(plan: "Plan", batches: list[list["OutputEntry"]], writer: "ShardWriter", options: Any,
                   on_written: Callable[[int], None]) -> None:
    """Run ``batches`` as group tasks on the cluster the options name; adopt their groups into ``writer``."""
    from ..plan.byte_path import byte_path_enabled

    tasks = make_tasks(plan, batches, writer.staging_folder, writer.budget,
                       byte_path=byte_path_enabled(options.byte_path), crc_check=options.crc_check,
                       allow_nonfinite=options.allow_nonfinite, fsync=options.fsync)
    if not tasks:
        return
    with connect(options.cluster, options.scheduler) as client:
        manifests: list[GroupManifest] = gather_in_order(
            client, run_group_task, tasks, lambda task, _: on_written(task.nbytes_out), writer.dest_prefix)
    for manifest in manifests:  # plan order, whatever order they completed in: the same index every run
        writer.adopt_groups(manifest.groups, manifest.metadata)


# -- verify and diff: per-tensor comparisons distributed by group ---------------------------------

def name_groups(sizes: Sequence[tuple[str, int]], budget: int) -> list[list[str]]:
    """Consecutive names whose bytes add up to at most ``budget`` (a bigger one goes alone)."""
    groups: list[list[str]] = []
    size = budget + 1
    for name, nbytes in sizes:
        if size + nbytes > budget or not groups:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


def map_groups(cluster: str | None, scheduler: str | None, function: Callable, groups: list[Any],
               on_done: Callable[[Any, Any], None], what: str) -> list[Any]:
    """``[function(g) for g in groups]``, each call a Dask task (for ``verify`` and ``diff``);
    ``on_done(group, result)`` as each completes."""
    with connect(cluster, scheduler) as client:
        return gather_in_order(client, function, groups, on_done, what)
