"""Pieces every subcommand shares: help formatting, write options, result printing.

Subcommands live in ``cli.py`` (core and surgery) and in ``cli_*.py`` modules
that each add their own subparsers through ``add_commands(subparsers)``.
"""

from __future__ import annotations

import argparse
import json

from ..text.display import display_name
from ..errors import EXIT_OK, exit_codes_epilog
from ..text.sizes import format_size
from ..plan.entries import Plan
from ..options import DEFAULT_MEMORY_BUDGET

EPILOG_EXIT_CODES = exit_codes_epilog()

CKPT_HELP = "a checkpoint: prefix (run/model.ckpt-1000), folder, 'checkpoint' state file, .index/.data file, or SavedModel folder"


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=34, width=100)


def add_write_options(p: argparse.ArgumentParser, *, only_when_given: bool = False) -> None:
    """The writing flags.  ``only_when_given`` (``run``): a flag left out sets nothing, so the
    recipe's own ``options`` apply unless the command line overrides them."""
    g = p.add_argument_group("writing")

    def default(value):
        return argparse.SUPPRESS if only_when_given else value

    g.add_argument("--memory-budget", default=default(DEFAULT_MEMORY_BUDGET), metavar="SIZE",
                   help=f"bytes of tensors held per shard group, e.g. 512MB or 2GiB (default {DEFAULT_MEMORY_BUDGET}); "
                        "peak memory is about (workers+1) x this plus the largest tensor held whole "
                        "(chunked tensors take about one budget)")
    g.add_argument("--workers", type=int, default=default(1), metavar="N", help="shard groups saved in parallel (default 1)")
    g.add_argument("--force", action="store_true", default=default(False),
                   help="replace an existing checkpoint at the destination")
    g.add_argument("--verify", action="store_true", default=default(False),
                   help="re-read every written value and compare before publishing")
    g.add_argument("--fsync", dest="fsync", action=argparse.BooleanOptionalAction, default=default(True),
                   help="fsync before publishing (default); --no-fsync is faster but unsafe on power loss")
    g.add_argument("--crc-check", dest="crc_check", action=argparse.BooleanOptionalAction, default=default(True),
                   help="check the CRC32C of every tensor copied unchanged (default); --no-crc-check is faster: "
                        "corruption is carried, never created, and stays detectable by `verify`")
    g.add_argument("--byte-path", dest="byte_path", action=argparse.BooleanOptionalAction, default=default(None),
                   help="copy unchanged tensors as bytes and compute casts, first-axis resizes and "
                        "linear/task_arithmetic merges chunk by chunk from bytes (default, unless "
                        "CKPTSURGERY_BYTE_PATH=0); --no-byte-path (or --tf-path) decodes every tensor through TensorFlow")
    g.add_argument("--tf-path", dest="byte_path", action="store_const", const=False, default=default(None),
                   help=argparse.SUPPRESS)  # the name the byte-path docs use; same as --no-byte-path
    add_cluster_options(g, default(None))
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=default(None),
                   help="no progress bar (default: a bar when stderr is a terminal)")
    g.add_argument("--dry-run", action="store_true", help="print the plan with byte totals; read no tensor data, write nothing")
    g.add_argument("--json", action="store_true", help="print the plan or result as JSON")
    g.add_argument("-v", "--verbose", action="store_true", default=default(False),
                   help="list each dropped tensor's name (the summary line counts them by kind)")


def add_cluster_options(g, default=None) -> None:
    """``--cluster local[:N]`` / ``--scheduler [ADDRESS]``: run the work as Dask tasks (execute/cluster.py)."""
    g.add_argument("--cluster", metavar="local[:N]", default=default,
                   help="run the work as tasks on an embedded Dask cluster of N worker processes (default: one per "
                        "core); the destination must be on storage every worker reaches; needs ckptsurgery[dask]")
    g.add_argument("--scheduler", metavar="ADDRESS", nargs="?", const="", default=default,
                   help="run the work on a running Dask cluster (no ADDRESS: $DASK_SCHEDULER_ADDRESS)")


WRITE_OPTIONS = ("memory_budget", "workers", "force", "verify", "fsync", "progress", "crc_check", "byte_path",
                 "cluster", "scheduler")


def write_options(args: argparse.Namespace) -> dict:
    """The writing flags as API keyword arguments (only those set, for ``run``)."""
    return {name: getattr(args, name) for name in WRITE_OPTIONS if hasattr(args, name)}


def emit_write(result, args: argparse.Namespace) -> int:
    if isinstance(result, Plan):
        print(json.dumps(result.to_json(), indent=2) if args.json else result.render())
        return EXIT_OK
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        dropped = f", {len(result.dropped)} dropped" if result.dropped else ""
        print(f"wrote {display_name(result.prefix)}: {result.tensors} tensors, {format_size(result.nbytes)}{dropped}")
    return EXIT_OK


