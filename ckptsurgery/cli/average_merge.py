"""``ckptsurgery average`` and ``ckptsurgery merge``: thin flags over :func:`ckptsurgery.api.average` and :func:`ckptsurgery.api.merge`."""

from __future__ import annotations

import argparse

from .common import CKPT_HELP, Formatter, add_write_options, emit_write, write_options
from ..errors import EXIT_USAGE, CkptSurgeryError, UsageError, error_line

AVERAGE_EPILOG = """\
examples:
  # the plain mean of three checkpoints
  ckptsurgery average run/model.ckpt-8000 run/model.ckpt-9000 run/model.ckpt-10000 --out avg/model.ckpt
  # the last 5 saves of a training run (from its 'checkpoint' file, else by step number)
  ckptsurgery average --last 5 run/ --out avg/model.ckpt
  # a weighted mean (weights are normalised), or an exponential moving average over the inputs in order
  ckptsurgery average a/ b/ c/ --weights 1 2 3 --out avg/model.ckpt
  ckptsurgery average --last 10 run/ --ema 0.9 --out ema/model.ckpt --dry-run

Floating tensors (float16, bfloat16, float32, float64) are averaged in float64, one tensor at a
time, reading one input at a time, and cast back. Integer, bool and string tensors (global_step,
vocabularies) are copied from the last input (--int-policy first: the first). Optimizer state
(Adam slots, beta1_power, TF2 .OPTIMIZER_SLOT...) is left out unless --keep-optimizer. Inputs must
have the same names, shapes and dtypes (--intersection: average the shared names only). A TF2
object graph is carried from the last input, so the result restores with tf.train.Checkpoint.
--ema D computes e1 = x1, ei = D*e(i-1) + (1-D)*xi over the inputs in the order given."""

MERGE_EPILOG = """\
examples:
  # encoder from A, decoder from B (B's encoder renamed to decoder)
  ckptsurgery merge --source a=runs/a/ --source b=runs/b/ \\
      --take a '^model/encoder/' --take b '^model/encoder/' --rename '/encoder/' '/decoder/' \\
      --out merged/ckpt
  # everything from A, the encoder averaged 30/70 with B
  ckptsurgery merge --source a=runs/a/ --source b=runs/b/ --take a . --take b '^encoder/' \\
      --method '^encoder/' linear weights=a:0.3,b:0.7 --out merged/model.ckpt
  # spherical interpolation of two fine-tunes, or TIES onto their common base
  ckptsurgery merge --source a=ft_a/ --source b=ft_b/ --take a . --take b . --method . slerp t=0.4 --out m/ckpt
  ckptsurgery merge --source base=pre/ --source a=ft_a/ --source b=ft_b/ --take a . --take b . \\
      --method . ties density=0.3 --base base --seed 1 --out m/ckpt

Each --take copies the tensors of one source whose name matches PATTERN (re.search); --rename
rewrites the names of the --take just before it (re.sub). Two sources giving one output name is an
error unless a --method rule matches that name (first match wins); the rule then combines them.
Methods needing a base (task_arithmetic, ties, dare) use the --base source's tensor of the same
output name, and also apply where only one source gives the name. KEY=VALUE sets a method
parameter; weights=a:0.3,b:0.7 (per source) or weights=0.3,0.7 (in take order) sets weights.
For anything longer, write a YAML recipe (ckptsurgery run --help).

methods:
"""


def add_commands(sub) -> None:
    p = sub.add_parser("average", help="average N checkpoints: mean, weighted, EMA, last N of a run",
                       formatter_class=Formatter,
                       description="Average checkpoints of one model tensor by tensor and write OUT, streaming: memory does\n"
                                   "not grow with the number of inputs. The plan is checked before any data is read.",
                       epilog=AVERAGE_EPILOG)
    p.add_argument("checkpoints", nargs="*", metavar="CKPT", help=CKPT_HELP)
    p.add_argument("--out", required=True, metavar="OUT", help="destination prefix")
    p.add_argument("--last", nargs=2, metavar=("N", "DIR"), help="average the N newest checkpoints of training folder DIR")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per input (normalised to sum 1)")
    g.add_argument("--ema", type=float, metavar="DECAY", help="exponential moving average over the inputs in order")
    p.add_argument("--int-policy", choices=("last", "first", "error"), default="last",
                   help="non-floating tensors: copy from the last input (default) or first, or refuse")
    p.add_argument("--keep-optimizer", action="store_true", help="average optimizer state too (default: leave it out)")
    p.add_argument("--intersection", action="store_true", help="average the names all inputs share; drop the rest")
    p.add_argument("--allow-nonfinite", action="store_true", help="write a result with NaN/Inf instead of failing")
    add_write_options(p)
    p.set_defaults(func=cmd_average)

    from ..merge_methods import available_methods, get_method

    def line(m: str) -> str:
        params = ", ".join(f"{k}={v}" for k, v in get_method(m).params.items())
        return f"  {m:16} {get_method(m).summary}" + (f" [{params}]" if params else "")

    methods = "\n".join(line(m) for m in available_methods())
    p = sub.add_parser("merge", help="build one checkpoint from parts of several (take, rename, combine)",
                       formatter_class=Formatter,
                       description="Take tensors from several sources by pattern, rename them, and combine the names several\n"
                                   "sources give with a merge method (linear, slerp, task_arithmetic, ties, dare). The plan is\n"
                                   "checked before any data is read; memory stays bounded by one tensor's inputs.",
                       epilog=MERGE_EPILOG + methods)
    p.add_argument("--source", action="append", default=[], metavar="ALIAS=PATH", required=True,
                   help="a source checkpoint and its alias (repeat for each source)")
    p.add_argument("--take", nargs=2, action=_TakeAction, metavar=("ALIAS", "PATTERN"),
                   help="take tensors of ALIAS whose name matches PATTERN (repeatable, in order)")
    p.add_argument("--rename", nargs=2, action=_RenameAction, metavar=("PATTERN", "REPLACEMENT"),
                   help="rename the preceding --take's tensors: re.sub(PATTERN, REPLACEMENT, name)")
    p.add_argument("--method", nargs="+", action=_MethodAction, metavar=("PATTERN", "METHOD KEY=VALUE"),
                   help="combine output names matching PATTERN with METHOD, e.g. --method . slerp t=0.3")
    p.add_argument("--base", metavar="ALIAS", help="base source for task_arithmetic, ties and dare")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed for randomised methods (dare); per tensor")
    p.add_argument("--keep-optimizer", action="store_true", help="let takes include optimizer state (default: skip it)")
    p.add_argument("--object-graph", dest="graph_from", metavar="ALIAS",
                   help="carry this source's TF2 object graph (default: the base's, else the first take's)")
    p.add_argument("--out", required=True, metavar="OUT", help="destination prefix")
    p.add_argument("--allow-nonfinite", action="store_true", help="write a result with NaN/Inf instead of failing")
    add_write_options(p)
    p.set_defaults(func=cmd_merge, takes=[], methods=[])


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    parser.exit(EXIT_USAGE, error_line(message) + "\n")


class _TakeAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        takes = list(getattr(namespace, "takes", None) or [])
        takes.append([values[0], values[1], []])
        namespace.takes = takes


class _RenameAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        takes = getattr(namespace, "takes", None) or []
        if not takes:
            _fail(parser, f"--rename {values[0]!r} {values[1]!r}: put --rename after the --take it applies to")
        takes[-1][2].append((values[0], values[1]))


class _MethodAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        from ..api import MethodRule

        if len(values) < 2:
            _fail(parser, "--method needs PATTERN METHOD [KEY=VALUE ...], e.g. --method '^encoder/' linear")
        pattern, method, *pairs = values
        params: dict = {}
        weights = None
        try:
            for pair in pairs:
                key, sep, text = pair.partition("=")
                if not sep or not key:
                    raise UsageError(f"--method {pattern!r} {method}: {pair!r} is not KEY=VALUE")
                if key == "weights":
                    weights = _parse_weights(text, pattern, method)
                else:
                    params[key] = _parse_value(text)
            rule = MethodRule(pattern, method, params, weights)
        except CkptSurgeryError as exc:
            _fail(parser, str(exc))
        namespace.methods = list(getattr(namespace, "methods", None) or []) + [rule]


def _parse_value(text: str):
    """``true``/``false``, an int, a float, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_weights(text: str, pattern: str, method: str):
    """``a:0.3,b:0.7`` (per source alias) or ``0.3,0.7`` (in take order)."""
    parts = [p for p in text.split(",") if p.strip()]
    try:
        if parts and all(":" in p for p in parts):
            return {alias.strip(): float(w) for alias, w in (p.rsplit(":", 1) for p in parts)}
        return [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"--method {pattern!r} {method}: weights={text!r}: use weights=a:0.3,b:0.7 "
                         f"or weights=0.3,0.7") from None


def _sources(items: list[str]) -> dict[str, str]:
    sources: dict[str, str] = {}
    for item in items:
        alias, sep, path = item.partition("=")
        if not sep or not alias or not path:
            raise UsageError(f"--source {item!r}: use --source ALIAS=PATH, e.g. --source a=runs/a/")
        if alias in sources:
            raise UsageError(f"--source {item!r}: alias {alias!r} given twice")
        sources[alias] = path
    return sources


def _print_dropped(result, args: argparse.Namespace, other: str = "other") -> None:
    """One line counting what was left out by kind; the names with --verbose (and always in --json)."""
    from ..report.dropped import dropped_by_name, render_dropped
    from ..plan.entries import Plan

    if not args.json and not isinstance(result, Plan) and result.dropped:
        print(render_dropped(dropped_by_name(result.dropped, other), getattr(args, "verbose", False), "left out"))


def cmd_average(args: argparse.Namespace) -> int:
    from .. import api

    checkpoints = list(args.checkpoints)
    if args.last:
        if checkpoints:
            raise UsageError("give checkpoints or --last N DIR, not both")
        count, folder = args.last
        try:
            n = int(count)
        except ValueError:
            raise UsageError(f"--last {count} {folder}: N must be a number, e.g. --last 5 run/") from None
        checkpoints = api.last_checkpoints(folder, n)
    if not checkpoints:
        raise UsageError("average needs checkpoints (CKPT...) or --last N DIR")
    result = api.average(checkpoints, args.out, weights=args.weights, ema=args.ema, int_policy=args.int_policy,
                           keep_optimizer=args.keep_optimizer, intersection=args.intersection,
                           allow_nonfinite=args.allow_nonfinite, dry_run=args.dry_run, **write_options(args))
    _print_dropped(result, args, other="not in every input")
    return emit_write(result, args)


def cmd_merge(args: argparse.Namespace) -> int:
    from .. import api

    if not args.takes:
        raise UsageError("merge needs at least one --take ALIAS PATTERN")
    takes = [api.Take(alias, pattern, renames) for alias, pattern, renames in args.takes]
    result = api.merge(_sources(args.source), args.out, takes=takes, methods=args.methods, base=args.base,
                         seed=args.seed, keep_optimizer=args.keep_optimizer, graph_from=args.graph_from,
                         allow_nonfinite=args.allow_nonfinite, dry_run=args.dry_run, **write_options(args))
    _print_dropped(result, args)
    return emit_write(result, args)
