"""The ``ckptsurgery`` command line: thin argument parsing over :mod:`ckptsurgery.api`.

Errors a user can cause print one line (``ckptsurgery: error: ...``) and
exit with the code documented in :mod:`ckptsurgery.errors`; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from .. import api
from ..errors import (EXIT_DIFFERENT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_IO, EXIT_OK, EXIT_USAGE,
                     CkptSurgeryError, error_line, print_error)
from ..plan.rules import Cast, Drop, DropOptimizer, Keep, Rename, Resize, Rule
from .common import (CKPT_HELP, EPILOG_EXIT_CODES, Formatter, add_cluster_options, add_write_options, emit_write,
                     write_options)


class _RuleAction(argparse.Action):
    """Collect rule flags into one ordered list, so rules apply in the order typed."""

    def __init__(self, option_strings, dest, make_rule, **kwargs):
        self.make_rule = make_rule
        super().__init__(option_strings, dest="rules", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        rules = list(getattr(namespace, "rules", None) or [])
        try:
            rules.append(self.make_rule(values if isinstance(values, list) else [values] if values is not None else []))
        except CkptSurgeryError as exc:
            parser.exit(exc.exit_code, error_line(exc) + "\n")
        namespace.rules = rules


def _cast_rule(values: list[str]) -> Rule:
    if len(values) not in (1, 2) or ":" not in values[0]:
        from ..errors import RuleError

        raise RuleError(f"--cast {' '.join(values)}: use --cast FROM:TO [PATTERN], e.g. --cast float32:bfloat16")
    src, dst = values[0].split(":", 1)
    return Cast(src, dst, values[1] if len(values) == 2 else None)


def _resize_rule(values: list[str]) -> Rule:
    if len(values) not in (2, 3):
        from ..errors import RuleError

        raise RuleError(f"--resize {' '.join(values)}: use --resize PATTERN SHAPE [INIT], e.g. --resize 'word_embeddings$' 30600,768 normal:0.02")
    return Resize(values[0], values[1], values[2] if len(values) == 3 else "zeros")


def _add_rule_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rules (applied in the order given; patterns are Python regexes found anywhere in the name)")
    g.add_argument("--rename", nargs=2, metavar=("PATTERN", "REPLACEMENT"), action=_RuleAction,
                   make_rule=lambda v: Rename(v[0], v[1]), help="re.sub on each full name, e.g. --rename '^bert/' 'encoder/'")
    g.add_argument("--keep", metavar="PATTERN", action=_RuleAction, make_rule=lambda v: Keep([v[0]]),
                   help="keep only names matching; several --keep flags in a row keep the union")
    g.add_argument("--drop", metavar="PATTERN", action=_RuleAction, make_rule=lambda v: Drop(v[0]),
                   help="drop names matching")
    g.add_argument("--drop-optimizer", nargs=0, action=_RuleAction, make_rule=lambda v: DropOptimizer(),
                   help="drop optimizer slots and counters (TF1 /Adam, /Momentum, beta1_power...; TF2 .OPTIMIZER_SLOT, optimizer/...)")
    g.add_argument("--cast", nargs="+", metavar="FROM:TO [PATTERN]", action=_RuleAction, make_rule=_cast_rule,
                   help="cast tensors of dtype FROM to TO, e.g. float32:bfloat16, optionally only names matching PATTERN; "
                        "their optimizer slots are cast with them; a value the narrower dtype cannot hold (NaN into an int, "
                        "203442 into float16) is refused, naming the tensor")
    g.add_argument("--resize", nargs="+", metavar="PATTERN SHAPE [INIT]", action=_RuleAction, make_rule=_resize_rule,
                   help="slice or pad to SHAPE (e.g. 30600,768; * keeps a size); INIT fills new cells: "
                        "zeros (default), normal:STD, uniform:LIMIT, mean; optimizer slots are resized with "
                        "their variable, new rows of moments being zeros")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckptsurgery", formatter_class=Formatter,
        description="Graph-free surgery on TensorFlow checkpoints, in bounded memory.\n\n"
                    "Reads tensors straight from .index/.data files and rewrites them by name, without the\n"
                    "model's code. Unchanged tensors move as CRC32C-checked bytes; casts, resizes and averages\n"
                    "are computed from bytes chunk by chunk; the rest are decoded and encoded by TensorFlow's\n"
                    "own ops, in shards no larger than a memory budget.\n"
                    "Inputs are never modified; outputs appear atomically.\n\n"
                    "Every path may be a URL, for inputs and outputs alike: gs://bucket/run/model.ckpt, or any\n"
                    "filesystem TensorFlow's tf.io.gfile knows (hdfs://, s3:// with its plugin, ram://);\n"
                    "file:///x is the plain path /x. See README, \"Checkpoints on gs:// and other filesystems\".",
        epilog="examples:\n"
               "  ckptsurgery inspect runs/bert/ --tree\n"
               "  ckptsurgery copy runs/bert/model.ckpt-1000 /tmp/copy/model.ckpt\n"
               "  ckptsurgery edit runs/bert/ slim/model.ckpt --drop-optimizer --cast float32:bfloat16 --dry-run\n"
               "  ckptsurgery copy gs://bucket/run/model.ckpt-1000 /tmp/copy/model.ckpt\n\n"
               + EPILOG_EXIT_CODES,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version="ckptsurgery " + _version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="list tensors with dtype, shape and size", formatter_class=Formatter,
                       description="List every tensor's name, dtype, shape and size from the index (no data is read).",
                       epilog="examples:\n  ckptsurgery inspect run/model.ckpt-1000\n  ckptsurgery inspect run/ --tree --depth 2\n"
                              "  ckptsurgery inspect run/ --json | jq '.total_bytes'")
    p.add_argument("checkpoint", help=CKPT_HELP)
    p.add_argument("--tree", action="store_true", help="sum sizes per scope instead of listing tensors")
    p.add_argument("--depth", type=int, default=None, help="with --tree: scope levels to show")
    p.add_argument("--json", action="store_true", help='print {"tensors": [{"name", "dtype", "shape", "nbytes"}...], ...}')
    p.set_defaults(func=cmd_inspect)  # a V2 index is read without TF

    p = sub.add_parser("copy", help="rewrite a checkpoint unchanged in streaming shards", formatter_class=Formatter,
                       description="Rewrite SRC at DST unchanged: read one tensor at a time, save in budget-sized shards,\n"
                                   "merge, and publish atomically with a 'checkpoint' state file.",
                       epilog="DST is a prefix (out/model.ckpt); an existing folder or a path ending in / gets SRC's base name.\n\n"
                              "example:\n  ckptsurgery copy run/model.ckpt-1000 backup/model.ckpt-1000 --memory-budget 512MB")
    p.add_argument("src", help=CKPT_HELP)
    p.add_argument("dst", help="destination prefix")
    add_write_options(p)
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser("edit", help="rename, filter, drop optimizer state, cast, resize in one pass",
                       formatter_class=Formatter,
                       description="Apply rules to SRC's tensors in the order given and write the result to DST in one\n"
                                   "streaming pass. A rule that matches nothing is an error. TF2 object graphs are rewritten\n"
                                   "to match, so the output still restores with tf.train.Checkpoint.",
                       epilog="examples:\n"
                              "  ckptsurgery edit old/ new/model.ckpt --drop-optimizer\n"
                              "  ckptsurgery edit old/ new/model.ckpt --rename '^bert/' 'encoder/' --drop 'cls/'\n"
                              "  ckptsurgery edit old/ new/model.ckpt --cast float32:bfloat16 'encoder/'\n"
                              "  ckptsurgery edit old/ new/model.ckpt --resize 'word_embeddings$' '30600,*' mean --dry-run")
    p.add_argument("src", help=CKPT_HELP)
    p.add_argument("dst", help="destination prefix")
    _add_rule_options(p)
    add_write_options(p)
    p.set_defaults(func=cmd_edit, rules=[])

    p = sub.add_parser("transfer", help="move OLD's matching variables into NEW's variable set",
                       formatter_class=Formatter,
                       description="Write OUT with exactly NEW's variable set (names, shapes, dtypes, TF2 object graph).\n"
                                   "Each variable takes OLD's value where a name matches (after --rename rules on OLD's\n"
                                   "names, or a --map file) and shape and dtype agree; otherwise it keeps NEW's value.\n"
                                   "NEW is a checkpoint of the new model as initialized. The report lists what moved.",
                       epilog="examples:\n"
                              "  ckptsurgery transfer --from old/ --into new_init/ --out warm/model.ckpt --report report.json\n"
                              "  ckptsurgery transfer --from tf1_run/ --into tf2_init/ --out warm/ckpt \\\n"
                              "      --rename '^(.*)$' 'model/\\1/.ATTRIBUTES/VARIABLE_VALUE' --strict\n\n"
                              "The report's \"transferred\" list names the variables to freeze while the changed\n"
                              "module retrains (see README).")
    p.add_argument("--from", dest="old", required=True, metavar="OLD", help="checkpoint to take values from")
    p.add_argument("--into", dest="new", required=True, metavar="NEW", help="checkpoint of the new model as initialized")
    p.add_argument("--out", dest="dst", required=True, metavar="OUT", help="destination prefix")
    p.add_argument("--map", dest="name_map", metavar="FILE", help="YAML/JSON mapping 'old name: new name', applied before --rename")
    p.add_argument("--rename", nargs=2, metavar=("PATTERN", "REPLACEMENT"), action=_RuleAction,
                   make_rule=lambda v: Rename(v[0], v[1]), help="re.sub on OLD's names before matching (repeatable, ordered)")
    p.add_argument("--strict", action="store_true", help="fail on a shape or dtype mismatch instead of keeping NEW's value")
    p.add_argument("--skip-optimizer", action="store_true", help="do not take optimizer state from OLD (keep NEW's)")
    p.add_argument("--old-step-counters", action="store_true",
                   help="take step counters (global_step, save_counter, optimizer iterations) from OLD; by default "
                        "they keep NEW's value: a warm start is a new run, its learning-rate schedule starts over")
    p.add_argument("--report", metavar="FILE", help="also write the report as JSON to FILE")
    add_write_options(p)
    p.set_defaults(func=cmd_transfer, rules=[])

    p = sub.add_parser("diff", help="compare two checkpoints: names, dtypes, shapes, values",
                       formatter_class=Formatter,
                       description="Compare A and B one tensor at a time: names only in one, dtype or shape differences,\n"
                                   "value differences with max absolute and relative error. Exit 0 when equal, 1 when not.",
                       epilog="examples:\n  ckptsurgery diff run/model.ckpt-1000 copy/model.ckpt-1000\n"
                              "  ckptsurgery diff a/ b/ --atol 1e-6 --json")
    p.add_argument("a", help=CKPT_HELP)
    p.add_argument("b", help=CKPT_HELP)
    p.add_argument("--atol", type=float, default=0.0, help="treat values within ATOL as equal (default: bit-exact)")
    p.add_argument("--names-only", action="store_true", help="compare names, dtypes and shapes; read no data")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_cluster_options(p)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("run", help="run a YAML recipe (edit, transfer, average or merge)", formatter_class=Formatter,
                       description="Run a surgery described in a YAML recipe, with the same vocabulary as the flags,\n"
                                   "so it can be reviewed, versioned and repeated. Unknown keys are errors.",
                       epilog="example recipe (see README for transfer, average and merge):\n"
                              "  edit:\n    source: runs/old/\n    rules:\n      - drop_optimizer: true\n"
                              "      - rename: {pattern: '^bert/', replacement: 'encoder/'}\n"
                              "      - cast: {from: float32, to: bfloat16}\n"
                              "  output: runs/slim/model.ckpt\n  options: {memory_budget: 512MB}\n\n"
                              "  ckptsurgery run slim.yaml --dry-run")
    p.add_argument("recipe", help="YAML recipe file")
    add_write_options(p, only_when_given=True)
    p.set_defaults(func=cmd_run)

    for module in _command_modules():
        module.add_commands(sub)
    return parser


def _command_modules() -> list:
    """Subcommand modules beyond the core ones (each has ``add_commands(subparsers)``)."""
    import importlib

    modules = []
    for name in ("average_merge", "verify_clean"):
        try:
            modules.append(importlib.import_module(f".{name}", __package__))
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
    return modules


def _version() -> str:
    from .. import __version__

    return __version__


def cmd_inspect(args: argparse.Namespace) -> int:
    # api.open_checkpoint and api.inspect's summary, imported from where api takes them: the
    # api module also loads the writing machinery, a third of inspect's start-up.
    from ..io.reader import open_checkpoint
    from ..report.inspect import render_table, render_tree, summary_json

    ckpt = open_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(summary_json(ckpt), indent=2))
    else:
        print(render_tree(ckpt, args.depth) if args.tree else render_table(ckpt))
    return EXIT_OK


def cmd_copy(args: argparse.Namespace) -> int:
    return emit_write(api.copy(args.src, args.dst, dry_run=args.dry_run, **write_options(args)), args)


def cmd_edit(args: argparse.Namespace) -> int:
    if not args.rules:
        raise CkptSurgeryError("edit needs at least one rule (--rename, --keep, --drop, --drop-optimizer, --cast, --resize); "
                               "use 'copy' to copy unchanged")
    from ..report.dropped import dropped_by_name, dropped_by_rule, render_dropped

    src = api.open_checkpoint(args.src)
    result = api.edit(src, args.dst, args.rules, dry_run=args.dry_run, **write_options(args))
    if not args.json and not isinstance(result, api.Plan) and result.dropped:
        by_rule = dropped_by_rule(src, args.rules)  # index only: replays the rules to say why
        why = {name: by_rule.get(name) or dropped_by_name([name], ckpt=src)[name] for name in result.dropped}
        print(render_dropped(why, args.verbose))
    return emit_write(result, args)


def cmd_transfer(args: argparse.Namespace) -> int:
    name_map = api.load_name_map(args.name_map) if args.name_map else None
    result, report = api.transfer(args.old, args.new, args.dst, rules=args.rules, name_map=name_map,
                                  strict=args.strict, skip_optimizer=args.skip_optimizer,
                                  old_step_counters=args.old_step_counters, dry_run=args.dry_run,
                                  **write_options(args))
    if args.report:
        report.write(args.report)
    if args.json:
        payload = {"report": report.to_json()}
        payload["plan" if isinstance(result, api.Plan) else "result"] = result.to_json()
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    print(report.render())
    return emit_write(result, args)


def cmd_diff(args: argparse.Namespace) -> int:
    report = api.diff(args.a, args.b, atol=args.atol, values=not args.names_only, progress=None,
                      cluster=args.cluster, scheduler=args.scheduler)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    return EXIT_OK if report.identical else EXIT_DIFFERENT


def cmd_run(args: argparse.Namespace) -> int:
    # Flags left out are absent (argparse.SUPPRESS), so the recipe's options apply; given ones win.
    result, report = api.run_recipe(args.recipe, dry_run=args.dry_run, **write_options(args))
    if report is not None and not args.json:
        print(report.render())
    if args.json and report is not None:
        payload = {"report": report.to_json()}
        payload["plan" if isinstance(result, api.Plan) else "result"] = result.to_json()
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    return emit_write(result, args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        from .._tf import quiet_when_imported

        quiet_when_imported()  # TF is imported when a tensor must be decoded, not before; then quietly
        return int(args.func(args) or 0)
    except CkptSurgeryError as exc:
        if args.debug:
            raise
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ckptsurgery: interrupted; nothing was published", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        if args.debug:
            raise
        print_error(f"{exc.filename or ''}: {exc.strerror or exc}")
        return EXIT_IO
    except Exception as exc:  # the last resort: a bug of ours must still be one line, not a traceback
        if args.debug:
            raise
        return _internal_error(exc)


def _internal_error(exc: BaseException) -> int:
    """Print an unexpected exception as one line and return :data:`EXIT_INTERNAL`."""
    detail = " ".join(str(exc).split())
    if len(detail) > 200:
        detail = detail[:197] + "..."
    print(f"ckptsurgery: internal error: {type(exc).__name__}{': ' + detail if detail else ''}; "
          "rerun with --debug", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
