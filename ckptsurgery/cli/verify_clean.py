"""``verify`` and ``clean``: integrity checks and crash recovery on the command line."""

from __future__ import annotations

import argparse
import json

from .common import CKPT_HELP, EPILOG_EXIT_CODES, Formatter, add_cluster_options
from ..text.display import display_text
from ..errors import EXIT_IO, EXIT_OK, print_error
from ..options import DEFAULT_MEMORY_BUDGET


def add_commands(sub) -> None:
    p = sub.add_parser(
        "verify", help="check the index and every tensor's checksum; optionally compare with another checkpoint",
        formatter_class=Formatter,
        description="Validate CKPT's index (every data shard present, every entry inside its shard), then read\n"
                    "every tensor, in pieces within --memory-budget, and check its CRC32C (V1 checkpoints: through\n"
                    "TensorFlow, one tensor at a time). Prints one row per tensor and names every bad one. With\n"
                    "--against, also compare names, dtypes, shapes and values bit for bit (NaN equals NaN).",
        epilog="examples:\n"
               "  ckptsurgery verify run/model.ckpt-1000\n"
               "  ckptsurgery verify backup/model.ckpt-1000 --against run/model.ckpt-1000\n\n"
               "exit codes: 0 all tensors intact (and equal), 1 differences with --against,\n"
               "3 a tensor, the index or the object graph is bad, 4 I/O error, 5 internal error, 130 interrupted",
    )
    p.add_argument("checkpoint", help=CKPT_HELP)
    p.add_argument("--against", metavar="OTHER", help="also compare every tensor with this checkpoint")
    p.add_argument("--json", action="store_true",
                   help='print {"ok", "bad": [names], "differences": [names], "tensors": [{"name", "status", ...}]}')
    p.add_argument("--memory-budget", default=DEFAULT_MEMORY_BUDGET, metavar="SIZE",
                   help="bytes held at a time: each tensor of a V2 bundle is read in pieces within it (default %(default)s)")
    add_cluster_options(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "clean", help="recover a folder after crashed runs: roll back unfinished publishes, remove staging",
        formatter_class=Formatter,
        description="Remove the staging folders that ckptsurgery runs killed mid-write left in DIR. A run killed\n"
                    "while replacing a checkpoint (--force) gets its previous checkpoint moved back first.\n"
                    "Only folders carrying ckptsurgery's marker, of processes no longer running, are touched;\n"
                    "lock files of dead runs are removed too. (The next run writing the same destination does\n"
                    "this for that destination by itself.)",
        epilog="example:\n  ckptsurgery clean runs/bert/\n\n" + EPILOG_EXIT_CODES,
    )
    p.add_argument("folder", metavar="DIR", help="folder holding the destination(s) of crashed runs")
    p.add_argument("--json", action="store_true", help='print {"actions": [{"action", "path", "detail"}...]}')
    p.set_defaults(func=cmd_clean)


def cmd_verify(args: argparse.Namespace) -> int:
    from .. import api

    report = api.verify(args.checkpoint, against=args.against, progress=None, cluster=args.cluster,
                        scheduler=args.scheduler, memory_budget=args.memory_budget)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    error = report.error_line()
    if error is not None:
        print_error(error, after_output=True)
    return report.exit_code


def cmd_clean(args: argparse.Namespace) -> int:
    from .. import api

    actions = api.clean_actions(args.folder)
    if args.json:
        print(json.dumps({"folder": args.folder, "actions": [a.to_json() for a in actions]}, indent=2))
    elif actions:
        print("\n".join(display_text(a) for a in actions))
    else:
        print(f"nothing to clean in {args.folder}")
    kept = [a for a in actions if a.action == "kept-previous"]
    if kept:
        print_error(f"{kept[0].path}: {kept[0].detail}", after_output=True)  # what could not be restored, and where it is
        return EXIT_IO
    return EXIT_OK
