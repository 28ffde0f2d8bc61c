"""Benchmark ckptsurgery against cp, a load-everything script and the TF1 graph recipe.

Run through ``scripts/bench`` (which sets up .venv first).  See ``--help``.

The driver process never imports TensorFlow: every competitor, the data
generator and the output checks run as their own child process, so each
measurement's wall time and peak RSS belong to that child alone.  Children
are measured with ``/usr/bin/time`` when it exists, else through a fresh
Python wrapper process that reports ``getrusage(RUSAGE_CHILDREN)``.

Internal modes (``bench_impl.py _generate ...`` and so on) are the child
processes; they are not part of the user interface.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
GENERATOR_VERSION = 2
GROUP_BYTES = 256 * 10**6
MB = 10**6
GB = 10**9
TIME_BIN = "/usr/bin/time"
#: --data-dir: checkpoints there are used as they are, never generated, replaced or deleted
READ_ONLY_DATA: Path | None = None

ROWS = {
    "cp": "cp of .index + .data-* into a new folder (no fsync)",
    "cp-sync": "cp followed by sync (data on disk, like ckptsurgery's default)",
    "copy": "ckptsurgery copy (default budget and workers, fsync)",
    "copy-nofsync": "ckptsurgery copy --no-fsync",
    "copy-w2": "ckptsurgery copy --workers 2 --no-fsync (informational)",
    "load-copy": "load-everything copy: every tensor into an eager tf.Variable, Saver.save",
    "edit": "ckptsurgery edit --drop-optimizer --rename '^bert/' 'encoder/'",
    "load-edit": "load-everything edit: same surgery with everything in memory",
    "graph-edit": "TF1 graph recipe: restore in a Session, assign into renamed variables, Saver.save",
    "scale4": "ckptsurgery copy on the 4x-layers checkpoint (--full only)",
    "average": "ckptsurgery average of 8 BERT-base checkpoints vs the tensor2tensor recipe, 2 vs 16 inputs",
    "many-inspect": "ckptsurgery inspect of a checkpoint of 200k scalar tensors (--many N)",
    "many-copy": "ckptsurgery copy of the same 200k-scalar checkpoint",
    "cluster": "ckptsurgery average of 8 BERT-base: one process vs --cluster local:2 (coordinator's own peak RSS)",
    "copy-nocrc": "ckptsurgery copy --no-crc-check (fsync), vs cp+sync",
    "inspect": "ckptsurgery inspect of the BERT-large index (1,195 tensors)",
    "big-copy": "ckptsurgery copy of a checkpoint holding one 6 GB float32 tensor (--big only)",
    "big-cast": "ckptsurgery edit --cast float32:bfloat16 of that checkpoint (--big only)",
    "big-average": "ckptsurgery average of 4 such checkpoints (hard links of one data file; --big only)",
    "reflink-rename": "rename-only edit --no-crc-check on a loop-mounted XFS (reflink) image (--big only)",
}
MANY_ROWS = ("many-inspect", "many-copy")
BIG_ROWS = ("big-copy", "big-cast", "big-average", "reflink-rename")
DEFAULT_ROWS = ["cp", "cp-sync", "copy", "copy-nocrc", "copy-nofsync", "copy-w2", "load-copy", "edit", "load-edit",
                "graph-edit", "inspect", "scale4", "average", *MANY_ROWS]


# ---------------------------------------------------------------------------
# Synthetic checkpoints
# ---------------------------------------------------------------------------

def bert_spec(layers: int, hidden: int, *, adam: bool, vocab: int = 30522, max_pos: int = 512,
              seed: int = 0, step: int = 1000) -> dict:
    """Variable list of google-research/bert's BertModel + pre-training heads (+ AdamW slots)."""
    inter = 4 * hidden
    variables: list[tuple[str, list[int]]] = []

    def add(name, shape):
        variables.append((name, list(shape)))

    def dense(scope, n_in, n_out):
        add(f"{scope}/kernel", [n_in, n_out])
        add(f"{scope}/bias", [n_out])

    def layer_norm(scope):
        add(f"{scope}/beta", [hidden])
        add(f"{scope}/gamma", [hidden])

    add("bert/embeddings/word_embeddings", [vocab, hidden])
    add("bert/embeddings/token_type_embeddings", [2, hidden])
    add("bert/embeddings/position_embeddings", [max_pos, hidden])
    layer_norm("bert/embeddings/LayerNorm")
    for i in range(layers):
        p = f"bert/encoder/layer_{i}"
        for part in ("query", "key", "value"):
            dense(f"{p}/attention/self/{part}", hidden, hidden)
        dense(f"{p}/attention/output/dense", hidden, hidden)
        layer_norm(f"{p}/attention/output/LayerNorm")
        dense(f"{p}/intermediate/dense", hidden, inter)
        dense(f"{p}/output/dense", inter, hidden)
        layer_norm(f"{p}/output/LayerNorm")
    dense("bert/pooler/dense", hidden, hidden)
    dense("cls/predictions/transform/dense", hidden, hidden)
    add("cls/predictions/transform/LayerNorm/beta", [hidden])
    add("cls/predictions/transform/LayerNorm/gamma", [hidden])
    add("cls/predictions/output_bias", [vocab])
    add("cls/seq_relationship/output_weights", [2, hidden])
    add("cls/seq_relationship/output_bias", [2])

    tensors = []
    for name, shape in variables:
        tensors.append([name, shape, "float32"])
        if adam:
            tensors.append([name + "/adam_m", shape, "float32"])
            tensors.append([name + "/adam_v", shape, "float32"])
    tensors.append(["global_step", [], "int64"])
    return {"generator": GENERATOR_VERSION, "layers": layers, "hidden": hidden, "adam": adam, "seed": seed,
            "step": step, "tensors": tensors, "nbytes": sum(_nbytes(s, d) for _, s, d in tensors)}


def _nbytes(shape, dtype) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * (8 if dtype == "int64" else 4)


def spec_digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def ensure_checkpoint(folder: Path, spec: dict, log) -> str:
    """Generate the checkpoint described by ``spec`` in ``folder`` unless a matching one is cached."""
    prefix = folder / f"model.ckpt-{spec['step']}"
    spec_file = folder / "spec.json"
    want = dict(spec, digest=spec_digest(spec))
    if spec_file.is_file() and Path(str(prefix) + ".index").is_file():
        try:
            if json.loads(spec_file.read_text()).get("digest") == want["digest"]:
                log(f"  cached: {_short(str(folder))} ({spec['nbytes'] / GB:.2f} GB)")
                return str(prefix)
        except ValueError:
            pass
    if READ_ONLY_DATA is not None and READ_ONLY_DATA in folder.parents:
        raise SystemExit(f"{folder}: no matching checkpoint in --data-dir (read-only: nothing is generated there)")
    shutil.rmtree(folder, ignore_errors=True)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "spec.json").write_text(json.dumps(want))
    log(f"  generating {_short(str(folder))}: {len(spec['tensors'])} tensors, {spec['nbytes'] / GB:.2f} GB ...")
    t0 = time.perf_counter()
    _check_call([sys.executable, __file__, "_generate", str(tmp / "spec.json"), str(tmp / prefix.name)],
                BENCH / "logs" / f"generate-{folder.name}.log")
    tmp.rename(folder)
    log(f"  generated in {time.perf_counter() - t0:.0f} s")
    return str(prefix)


def child_generate(spec_path: str, prefix: str) -> None:
    """Write the checkpoint group by group (~256 MB each) with SaveV2, then merge: bounded memory."""
    import numpy as np
    import tensorflow as tf

    spec = json.loads(Path(spec_path).read_text())
    rng = np.random.default_rng(spec["seed"])
    parts: list[str] = []
    group: list[tuple[str, object]] = []
    group_bytes = 0

    def flush():
        nonlocal group, group_bytes
        if not group:
            return
        part = f"{prefix}.parts/{len(parts):05d}/part"
        os.makedirs(os.path.dirname(part), exist_ok=True)
        tf.raw_ops.SaveV2(prefix=part, tensor_names=[n for n, _ in group], shape_and_slices=[""] * len(group),
                          tensors=[tf.constant(a) for _, a in group])
        parts.append(part)
        group, group_bytes = [], 0

    for name, shape, dtype in spec["tensors"]:
        if dtype == "int64":
            array = np.array(spec["step"], dtype=np.int64).reshape(shape)
        else:
            array = rng.standard_normal(shape, dtype=np.float32)
        if group and group_bytes + array.nbytes > GROUP_BYTES:
            flush()
        group.append((name, array))
        group_bytes += array.nbytes
    flush()
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=prefix, delete_old_dirs=True)
    shutil.rmtree(prefix + ".parts", ignore_errors=True)
    os.sync()


# ---------------------------------------------------------------------------
# Competitors that are not ckptsurgery (run as child processes)
# ---------------------------------------------------------------------------

def _is_optimizer(name: str) -> bool:
    return name.endswith("/adam_m") or name.endswith("/adam_v")


def _rename(name: str) -> str:
    return re.sub(r"^bert/", "encoder/", name)


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def child_bare_tf() -> None:
    _quiet_tf()


def child_load_copy(src: str, dst: str) -> None:
    """Load-everything copy: every tensor into an eager tf.Variable, then Saver.save."""
    tf = _quiet_tf()
    reader = tf.train.load_checkpoint(src)
    variables = {}
    for name in sorted(reader.get_variable_to_shape_map()):
        variables[name] = tf.Variable(reader.get_tensor(name))
    tf.compat.v1.train.Saver(var_list=variables).save(None, dst, write_meta_graph=False)


def child_load_edit(src: str, dst: str) -> None:
    """Load-everything edit: read ALL tensors, keep non-optimizer ones, rename, Variables, Saver.save."""
    tf = _quiet_tf()
    reader = tf.train.load_checkpoint(src)
    values = {name: reader.get_tensor(name) for name in sorted(reader.get_variable_to_shape_map())}
    variables = {_rename(name): tf.Variable(value) for name, value in values.items() if not _is_optimizer(name)}
    tf.compat.v1.train.Saver(var_list=variables).save(None, dst, write_meta_graph=False)


def child_graph_edit(src: str, dst: str) -> None:
    """The TF1 graph recipe, emulated without a meta graph (see NOTES in the results)."""
    tf = _quiet_tf()
    v1 = tf.compat.v1
    reader = tf.train.load_checkpoint(src)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    graph = tf.Graph()
    with graph.as_default():
        old = {}
        with v1.variable_scope("old"):
            for name in sorted(shapes):
                old[name] = v1.get_variable(name, shape=shapes[name], dtype=dtypes[name],
                                            initializer=v1.zeros_initializer(), trainable=False)
        new, assigns = {}, []
        with v1.variable_scope("new"):
            for name in sorted(shapes):
                if _is_optimizer(name):
                    continue
                var = v1.get_variable(_rename(name), shape=shapes[name], dtype=dtypes[name],
                                      initializer=v1.zeros_initializer(), trainable=False)
                new[_rename(name)] = var
                assigns.append(v1.assign(var, old[name]))
        restore = v1.train.Saver(var_list=old)
        save = v1.train.Saver(var_list=new)
        with v1.Session(graph=graph) as sess:
            restore.restore(sess, src)
            sess.run(tf.group(*assigns))
            save.save(sess, dst, write_meta_graph=False)


def child_t2t_average(out: str, *inputs: str) -> None:
    """tensor2tensor avg_checkpoints.py, TF2 eager edition: float64 accumulators for the whole model."""
    import numpy as np

    tf = _quiet_tf()
    first = tf.train.load_checkpoint(inputs[0])
    shapes = first.get_variable_to_shape_map()
    dtypes = first.get_variable_to_dtype_map()
    sums = {name: np.zeros(shape) for name, shape in shapes.items()}
    for path in inputs:
        reader = tf.train.load_checkpoint(path)
        for name in sums:
            sums[name] += reader.get_tensor(name)
    variables = {}
    for name in sorted(sums):
        variables[name] = tf.Variable((sums[name] / len(inputs)).astype(dtypes[name].as_numpy_dtype))
    tf.compat.v1.train.Saver(var_list=variables).save(None, out, write_meta_graph=False)


def child_verify(mode: str, out: str, *srcs: str) -> None:
    """Check names/shapes/dtypes of the output and the values of a few tensors; exit 1 on mismatch."""
    import numpy as np

    tf = _quiet_tf()
    src = tf.train.load_checkpoint(srcs[0])
    got = tf.train.load_checkpoint(out)
    src_shapes, src_dtypes = src.get_variable_to_shape_map(), src.get_variable_to_dtype_map()
    if mode == "edit":
        expect = {_rename(n): n for n in src_shapes if not _is_optimizer(n)}
    elif mode == "edit-rename":
        expect = {_rename(n): n for n in src_shapes}
    else:
        expect = {n: n for n in src_shapes}
    got_shapes, got_dtypes = got.get_variable_to_shape_map(), got.get_variable_to_dtype_map()
    problems = []
    if set(got_shapes) != set(expect):
        problems.append(f"names differ: missing {sorted(set(expect) - set(got_shapes))[:3]}, "
                        f"extra {sorted(set(got_shapes) - set(expect))[:3]}")
    for new, old in expect.items():
        if new in got_shapes and list(got_shapes[new]) != list(src_shapes[old]):
            problems.append(f"{new}: shape differs")
        elif mode != "shapes" and new in got_shapes and got_dtypes[new] != src_dtypes[old]:
            problems.append(f"{new}: dtype differs")
    samples = [n for n in ("bert/embeddings/word_embeddings", "bert/encoder/layer_0/output/dense/kernel",
                           "cls/predictions/output_bias", "global_step") if n in src_shapes]
    for old in samples:
        if mode == "shapes":
            break
        new = _rename(old) if mode.startswith("edit") else old
        if new not in got_shapes:
            continue
        if mode == "average":
            if src_dtypes[old].is_floating:
                want = (sum(tf.train.load_checkpoint(p).get_tensor(old).astype(np.float64) for p in srcs)
                        / len(srcs)).astype(np.float32)
                if not np.allclose(got.get_tensor(new), want, rtol=1e-5, atol=1e-6):
                    problems.append(f"{new}: value is not the mean of the inputs")
        elif not np.array_equal(got.get_tensor(new), src.get_tensor(old)):
            problems.append(f"{new}: value differs from the source")
    if problems:
        print("VERIFY FAILED: " + "; ".join(problems[:5]))
        sys.exit(1)
    print(f"verified {len(got_shapes)} tensors")


def child_generate_many(count: str, prefix: str) -> None:
    """A checkpoint of ``count`` float32 scalars (per-entry costs, not bytes, dominate), one SaveV2 call."""
    tf = _quiet_tf()
    n = int(count)
    names = [f"layer_{i // 100:05d}/unit_{i % 100:02d}/scalar" for i in range(n)]
    values = [tf.constant(float(i)) for i in range(n)]
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * n, tensors=values)
    os.sync()


def child_rusage_wrapper(out_file: str, *cmd: str) -> None:
    """Fallback measurement when /usr/bin/time is missing: run cmd, report wall and RUSAGE_CHILDREN."""
    import resource

    t0 = time.perf_counter()
    rc = subprocess.call(list(cmd))
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(out_file).write_text(f"{wall:.3f} {ru.ru_maxrss} {ru.ru_utime:.2f} {ru.ru_stime:.2f} {rc}\n")
    sys.exit(rc)


CHILDREN = {
    "_generate": child_generate, "_bare_tf": child_bare_tf, "_load_copy": child_load_copy,
    "_load_edit": child_load_edit, "_graph_edit": child_graph_edit, "_t2t_average": child_t2t_average,
    "_verify": child_verify, "_rusage": child_rusage_wrapper, "_generate_many": child_generate_many,
}


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------

@dataclass
class Result:
    row: str
    label: str
    wall: float | None = None
    rss: int | None = None  # bytes
    cpu: float | None = None
    ok: bool = True
    error: str = ""
    walls: list[float] = field(default_factory=list)


def _check_call(cmd: list[str], log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = "".join(log_path.read_text().splitlines(True)[-15:])
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}\n{tail}")


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


class Runner:
    def __init__(self, cold: bool, log):
        self.cold = cold
        self.log = log
        self.use_time = os.access(TIME_BIN, os.X_OK)

    def measure(self, row: str, label: str, cmd: list[str], *, cleanup: list[Path] = (), verify=None,
                repeat: int = 1) -> Result:
        """Run ``cmd`` as its own measured child ``repeat`` times: median wall, largest peak RSS.

        The page cache is dropped before each run when possible, else one untimed warm-up run goes first.
        """
        result = Result(row, label)
        log_path = BENCH / "logs" / f"{row}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)

        def reset():
            for path in cleanup:
                shutil.rmtree(path, ignore_errors=True)
                path.mkdir(parents=True, exist_ok=True)
            os.sync()

        if not self.cold:  # warm-up run so every row sees the same (warm) cache
            reset()
            with open(log_path, "w") as log:
                subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.log(f"  [{row}] {_short_cmd(cmd)}")
        walls, rsss, cpus = [], [], []
        for _ in range(max(1, repeat)):
            reset()
            if self.cold:
                drop_caches()
            stats = BENCH / "logs" / f"{row}.time"
            stats.unlink(missing_ok=True)
            if self.use_time:
                wrapped = [TIME_BIN, "-o", str(stats), "-f", "%e %M %U %S %x", *cmd]
            else:
                wrapped = [sys.executable, __file__, "_rusage", str(stats), *cmd]
            t0 = time.perf_counter()
            with open(log_path, "w") as log:
                rc = subprocess.call(wrapped, stdout=log, stderr=subprocess.STDOUT)
            wall = time.perf_counter() - t0
            fields = stats.read_text().split()[-5:] if stats.is_file() else []
            if rc != 0 or len(fields) < 5:
                result.ok = False
                tail = [line for line in log_path.read_text().splitlines() if line.strip()][-3:]
                result.error = f"exit {rc}: " + " | ".join(tail)[:300]
                self.log(f"    FAILED {result.error}")
                for path in cleanup:
                    shutil.rmtree(path, ignore_errors=True)
                return result
            walls.append(wall)
            rsss.append(int(fields[1]) * 1024)
            cpus.append(float(fields[2]) + float(fields[3]))
            self.log(f"    {wall:.1f} s, peak RSS {rsss[-1] / MB:,.0f} MB, CPU {cpus[-1]:.1f} s")
        order = sorted(range(len(walls)), key=walls.__getitem__)
        mid = order[len(order) // 2]
        result.wall, result.cpu, result.rss = walls[mid], cpus[mid], max(rsss)
        result.walls = walls
        if verify is not None:
            vlog = BENCH / "logs" / f"{row}.verify.log"
            with open(vlog, "w") as log:
                vrc = subprocess.call([sys.executable, __file__, "_verify", *verify], stdout=log, stderr=subprocess.STDOUT)
            if vrc != 0:
                result.ok = False
                result.error = "output check failed: " + (vlog.read_text().strip().splitlines() or ["?"])[-1][:300]
                self.log(f"    {result.error}")
        for path in cleanup:
            shutil.rmtree(path, ignore_errors=True)
        return result


def _short_cmd(cmd: list[str]) -> str:
    parts = [_short(c) for c in cmd]
    files = [p for p in parts if re.search(r"\.(index|data-\d{5}-of-\d{5})$", p)]
    if len(files) > 2:  # cp's file list
        first = parts.index(files[0])
        parts[first:first + len(files)] = [f"<{len(files)} checkpoint files>"]
    text = " ".join(parts)
    return text if len(text) <= 400 else text[:400] + " ..."


def _short(text: str) -> str:
    text = str(text)
    if text.startswith(str(ROOT) + "/"):
        return text[len(str(ROOT)) + 1:]
    return text if text != sys.executable else "python"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ckptsurgery", *args]


def average_available() -> bool:
    return subprocess.call(cli("average", "--help"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    versions = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf, numpy as np; print(tf.__version__, np.__version__)"],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    ).stdout.split()
    fs = "?"
    try:
        out = subprocess.run(["df", "-T", str(BENCH)], capture_output=True, text=True).stdout.splitlines()[-1].split()
        fs = f"{out[1]} on {out[0]}"
    except (OSError, IndexError):
        pass
    tool = subprocess.run(cli("--version"), capture_output=True, text=True).stdout.strip() or "ckptsurgery ?"
    copy_help = subprocess.run(cli("copy", "--help"), capture_output=True, text=True).stdout
    budget = re.search(r"\(default\s+([0-9.]+\s*[A-Za-z]*)\)", copy_help)
    return {"nproc": os.cpu_count(), "ram": ram, "cpu": cpu, "tf": versions[0] if versions else "?",
            "tool": tool, "budget": budget.group(1) if budget else "?",
            "numpy": versions[1] if len(versions) > 1 else "?", "python": platform.python_version(),
            "kernel": platform.release(), "fs": fs}


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def fmt_s(x):
    return "—" if x is None else f"{x:.1f}"


def fmt_wall(r):
    if r.wall is None:
        return "—"
    if len(r.walls) > 1:
        return f"{r.wall:.1f} ({min(r.walls):.1f}–{max(r.walls):.1f}, n={len(r.walls)})"
    return f"{r.wall:.1f}"


def fmt_mb(x):
    return "—" if x is None else f"{x / MB:,.0f}"


def render(results: dict[str, Result], targets: list[tuple[str, str, str, bool | None]], info: dict,
           context: dict, notes: list[str]) -> str:
    bare = results.get("bare")
    lines = [
        "# ckptsurgery benchmark",
        "",
        f"- date: {context['date']}",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram'] / 2**30:.1f} GiB RAM, "
        f"{info['fs']}, Linux {info['kernel']}",
        f"- software: {info['tool']} (default --memory-budget {info['budget']}), TensorFlow {info['tf']}, "
        f"numpy {info['numpy']}, Python {info['python']}",
        f"- checkpoint: synthetic BERT-large with AdamW slots, {context['ckpt']}",
        f"- page cache: {context['cache']}",
        f"- load average (1 min) at start / end: {context['load']}; other processes on the machine add noise",
        "- units: MB = 10^6 bytes, GB = 10^9 bytes (as in ckptsurgery's --memory-budget)",
        f"- bare `import tensorflow` process: peak RSS {fmt_mb(bare.rss if bare else None)} MB "
        f"(the 'above TF' column subtracts this)",
        "",
        "| Row | What | Wall (s) | × ref | Peak RSS (MB) | RSS above TF (MB) | CPU (s) | Targets |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for key, r in results.items():
        if key == "bare":
            continue
        if not r.ok:
            lines.append(f"| {key} | {r.label} | ERROR | | | | | {r.error.replace('|', '/')} |")
            continue
        above = "—" if (bare is None or r.rss is None or key.startswith("cp")) else f"{(r.rss - bare.rss) / MB:,.0f}"
        ratio = context["ratios"].get(key, "")
        row_targets = [f"{name}: {'PASS' if ok else 'FAIL'}" for (k, name, _, ok) in targets if k == key and ok is not None]
        lines.append(f"| {key} | {r.label} | {fmt_wall(r)} | {ratio} | {fmt_mb(r.rss)} | {above} | "
                     f"{fmt_s(r.cpu)} | {'; '.join(row_targets)} |")
    if targets:
        lines += ["", "| Target | Measured | Result |", "|---|---|---|"]
        for _, name, measured, ok in targets:
            lines.append(f"| {name} | {measured} | {'—' if ok is None else 'PASS' if ok else 'FAIL'} |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="scripts/bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure ckptsurgery's wall time and peak RSS against cp, a load-everything script and\n"
                    "the TF1 graph recipe on a synthetic BERT-large checkpoint with AdamW slots\n"
                    "(24 layers, hidden 1024: 4.0 GB at --scale 1). Every competitor runs as its own\n"
                    "child process under /usr/bin/time, with the page cache dropped before each run\n"
                    "when the kernel allows it. Prints a Markdown table and writes it to --out-md.",
        epilog="rows (--only takes a comma-separated subset):\n"
               + "\n".join(f"  {k:13s} {v}" for k, v in ROWS.items())
               + "\n\nexamples:\n"
                 "  scripts/bench                        # the 4 GB run, about 10 minutes on 2 cores\n"
                 "  scripts/bench --scale 0.05           # smoke run: 1 layer, ~0.5 GB\n"
                 "  scripts/bench --full --keep-data     # adds the 16 GB scale-4 memory check (~40 GB disk)\n"
                 "  scripts/bench --only copy,edit,load-edit\n"
                 "  scripts/bench --only many-inspect,many-copy   # per-entry costs, 200k scalars\n\n"
                 "Generated checkpoints live in .bench/data/ and are reused when their spec matches;\n"
                 "they are deleted at the end unless --keep-data. Logs: .bench/logs/.",
    )
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the number of encoder layers (24) by S; the largest tensor stays the same "
                        "(default 1: 4.0 GB)")
    p.add_argument("--hidden", type=int, default=1024, help="hidden size (default 1024, BERT-large)")
    p.add_argument("--full", action="store_true",
                   help="also run the memory-scaling check: copy a checkpoint with 4x the layers (16 GB at --scale 1)")
    p.add_argument("--only", metavar="ROWS", help="comma-separated rows to run (see below)")
    p.add_argument("--big", action="store_true",
                   help="also run the big-* rows (a 6 GB single-tensor checkpoint: ~13 GB disk at a time) and "
                        "reflink-rename (a loop-mounted XFS image holding a copy of the checkpoint: root, xfsprogs)")
    p.add_argument("--big-gb", type=float, default=6.0, metavar="GB",
                   help="size of the big-* rows' one tensor (default 6)")
    p.add_argument("--many", type=int, default=200_000, metavar="N",
                   help="tensors in the many-* rows' checkpoint (default 200000 float32 scalars)")
    p.add_argument("--keep-data", action="store_true", help="keep generated checkpoints for the next run")
    p.add_argument("--data-dir", metavar="DIR",
                   help="read the BERT and many-* checkpoints from DIR (e.g. another checkout's .bench/data), "
                        "read-only: nothing there is generated, replaced or deleted")
    p.add_argument("--out-md", default=str(BENCH / "results.md"), metavar="PATH",
                   help="where to write the Markdown results (default .bench/results.md)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="runs per row, median wall time reported (default 1; the cp rows always run at least 3 times)")
    p.add_argument("--average-peers-anyway", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    rows = DEFAULT_ROWS if not args.only else [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if "scale4" in rows and not args.full and not args.only:
        rows = [r for r in rows if r != "scale4"]
    if args.full and "scale4" not in rows and not args.only:
        rows.append("scale4")
    if args.big and not args.only:
        rows += [r for r in BIG_ROWS if r not in rows]
    args.rows = rows
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    BENCH.mkdir(exist_ok=True)
    (BENCH / "logs").mkdir(exist_ok=True)
    global READ_ONLY_DATA
    data = Path(args.data_dir).resolve() if args.data_dir else BENCH / "data"
    READ_ONLY_DATA = data if args.data_dir else None
    out = BENCH / "out"
    started = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    layers = max(1, round(24 * args.scale))
    spec = bert_spec(layers, args.hidden, adam=True)
    ckpt_desc = (f"{layers} layers, hidden {args.hidden}, {len(spec['tensors'])} tensors, "
                 f"{spec['nbytes'] / GB:.2f} GB (largest tensor: word_embeddings "
                 f"{30522 * args.hidden * 4 / MB:.0f} MB)")
    info = machine_info()
    load_start = _loadavg()
    cold = drop_caches()
    runner = Runner(cold, log)
    log(f"rows: {', '.join(args.rows)}; page cache {'dropped before each run' if cold else 'warm (cannot drop)'}")
    free = shutil.disk_usage(BENCH).free
    need = spec["nbytes"] * 2.2 + (spec["nbytes"] * 8.5 if "scale4" in args.rows else 0)
    if free < need:
        log(f"WARNING: {free / GB:.0f} GB free, this run may need {need / GB:.0f} GB")

    results: dict[str, Result] = {}
    notes: list[str] = []
    ratios: dict[str, str] = {}
    targets: list[tuple[str, str, str, bool | None]] = []
    generated: list[Path] = []

    results["bare"] = runner.measure("bare", "python -c 'import tensorflow'", [sys.executable, __file__, "_bare_tf"])

    main_rows = [r for r in args.rows if r not in ("scale4", "average", "cluster", *MANY_ROWS, *BIG_ROWS)]
    src = None
    folder = data / f"bert-L{layers}-H{args.hidden}-adam"
    if main_rows or "scale4" in args.rows or "reflink-rename" in args.rows:
        log("checkpoint:")
        src = ensure_checkpoint(folder, spec, log)
        generated.append(folder)
    src_files = sorted(str(p) for p in Path(src).parent.glob(Path(src).name + ".*")) if src else []
    base = Path(src).name if src else ""

    def dest(row):
        return out / row

    def run_row(row, cmd, label, verify_mode=None, dst_prefix=None):
        verify = [verify_mode, str(dst_prefix), src] if verify_mode else None
        repeat = max(args.repeat, 3) if row.startswith("cp") else args.repeat  # cp is fast and noisy
        results[row] = runner.measure(row, label, cmd, cleanup=[dest(row)], verify=verify, repeat=repeat)

    for row in main_rows:
        d = dest(row)
        prefix = d / base
        if row == "cp":
            run_row(row, ["cp", *src_files, str(d) + "/"], "`cp` .index + .data-* (no fsync)", "copy", prefix)
        elif row == "cp-sync":
            run_row(row, ["sh", "-c", 'cp "$@" && sync', "cp", *src_files, str(d) + "/"], "`cp` then `sync`",
                    "copy", prefix)
        elif row == "copy":
            run_row(row, cli("copy", src, str(prefix), "--no-progress"), "`ckptsurgery copy` (default budget, fsync)",
                    "copy", prefix)
        elif row == "copy-nocrc":
            run_row(row, cli("copy", src, str(prefix), "--no-progress", "--no-crc-check"),
                    "`ckptsurgery copy --no-crc-check` (fsync)", "copy", prefix)
        elif row == "inspect":
            results[row] = runner.measure(row, f"`ckptsurgery inspect` of the {len(spec['tensors']):,}-tensor index",
                                          cli("inspect", src), repeat=max(args.repeat, 3))
        elif row == "copy-nofsync":
            run_row(row, cli("copy", src, str(prefix), "--no-progress", "--no-fsync"), "`ckptsurgery copy --no-fsync`",
                    "copy", prefix)
        elif row == "copy-w2":
            run_row(row, cli("copy", src, str(prefix), "--no-progress", "--no-fsync", "--workers", "2"),
                    "`ckptsurgery copy --workers 2 --no-fsync`", "copy", prefix)
        elif row == "load-copy":
            run_row(row, [sys.executable, __file__, "_load_copy", src, str(prefix)],
                    "load-everything copy (eager Variables + Saver)", "copy", prefix)
        elif row == "edit":
            run_row(row, cli("edit", src, str(prefix), "--drop-optimizer", "--rename", "^bert/", "encoder/",
                             "--no-progress"), "`ckptsurgery edit --drop-optimizer --rename` (fsync)", "edit", prefix)
        elif row == "load-edit":
            run_row(row, [sys.executable, __file__, "_load_edit", src, str(prefix)],
                    "load-everything edit (same surgery)", "edit", prefix)
        elif row == "graph-edit":
            run_row(row, [sys.executable, __file__, "_graph_edit", src, str(prefix)],
                    "TF1 graph recipe (same surgery)", "edit", prefix)

    # -- memory scaling: same largest tensor, 4x the layers ---------------------
    if "scale4" in args.rows:
        layers4 = 4 * layers
        spec4 = bert_spec(layers4, args.hidden, adam=True)
        log(f"scale-4 checkpoint ({layers4} layers):")
        folder4 = data / f"bert-L{layers4}-H{args.hidden}-adam"
        src4 = ensure_checkpoint(folder4, spec4, log)
        generated.append(folder4)
        prefix4 = dest("scale4") / Path(src4).name
        results["scale4"] = runner.measure(
            "scale4", f"`ckptsurgery copy` at 4x layers ({spec4['nbytes'] / GB:.1f} GB)",
            cli("copy", src4, str(prefix4), "--no-progress"), cleanup=[dest("scale4")],
            verify=["copy", str(prefix4), src4], repeat=args.repeat)
        if "copy" not in results:
            results["copy"] = runner.measure("copy", "`ckptsurgery copy` (default budget, fsync)",
                                             cli("copy", src, str(dest("copy") / base), "--no-progress"),
                                             cleanup=[dest("copy")], verify=["copy", str(dest("copy") / base), src],
                                             repeat=args.repeat)
        if not args.keep_data and not args.data_dir:
            shutil.rmtree(folder4, ignore_errors=True)

    # -- many small tensors: per-entry costs (index parsing, bookkeeping) -------
    if any(r in args.rows for r in MANY_ROWS):
        many = data / f"many-{args.many}" / "model.ckpt"
        if not Path(str(many) + ".index").is_file():
            if READ_ONLY_DATA is not None:
                raise SystemExit(f"{many}: missing from --data-dir (read-only: nothing is generated there)")
            log(f"checkpoint of {args.many:,} scalars:")
            _check_call([sys.executable, __file__, "_generate_many", str(args.many), str(many)],
                        BENCH / "logs" / "generate-many.log")
        generated.append(many.parent)
        if "many-inspect" in args.rows:
            results["many-inspect"] = runner.measure(
                "many-inspect", f"`ckptsurgery inspect` of {args.many:,} scalar tensors", cli("inspect", str(many)),
                repeat=args.repeat)
        if "many-copy" in args.rows:
            results["many-copy"] = runner.measure(
                "many-copy", f"`ckptsurgery copy` of {args.many:,} scalar tensors",
                cli("copy", str(many), str(dest("many-copy") / "model.ckpt"), "--no-progress"),
                cleanup=[dest("many-copy")], verify=["copy", str(dest("many-copy") / "model.ckpt"), str(many)],
                repeat=args.repeat)

    # -- one huge tensor, and reflinks ---------------------------------------------
    if any(r in args.rows for r in BIG_ROWS[:3]):
        run_big_rows(args, runner, results, targets, notes, log)
    if "reflink-rename" in args.rows:
        run_reflink_rename(src, runner, results, targets, notes, log)

    # -- averaging (hook: runs once `ckptsurgery average` exists) ---------------
    if "average" in args.rows:
        available = average_available()
        if not available and not args.average_peers_anyway:
            log("average: not available yet")
            notes.append("average: not available yet (`ckptsurgery average` is not a command of this build); "
                         "rows skipped.")
        else:
            run_average(args, runner, results, ratios, notes, generated, available, log)

    if "cluster" in args.rows:
        run_cluster(args, runner, results, ratios, notes, generated, log)

    # -- ratios and targets ------------------------------------------------------
    def ok(key):
        return key in results and results[key].ok and results[key].wall is not None

    if ok("cp"):
        for key in ("cp-sync", "copy", "copy-nofsync", "copy-w2", "load-copy"):
            if ok(key):
                ratios[key] = f"{results[key].wall / results['cp'].wall:.2f}× cp"
    if ok("load-edit"):
        for key in ("edit", "graph-edit"):
            if ok(key):
                ratios[key] = f"{results[key].wall / results['load-edit'].wall:.2f}× load-edit"
    if ok("cp-sync") and ok("copy"):
        notes.append(f"`ckptsurgery copy` (fsync) vs `cp`+`sync`: {results['copy'].wall / results['cp-sync'].wall:.2f}×.")
    for key, limit in (("copy", 1.25), ("copy-nocrc", 1.1)):
        if ok(key) and ok("cp-sync"):
            r = results[key].wall / results["cp-sync"].wall
            ratios[key] = (ratios[key] + ", " if key in ratios else "") + f"{r:.2f}× cp+sync"
            targets.append((key, f"wall ≤ {limit}× cp+sync", f"{key}: {r:.2f}× cp+sync", r <= limit))
    for key in ("copy", "edit", "scale4"):
        if ok(key):
            targets.append((key, "peak RSS < 150 MB", f"{key}: {results[key].rss / MB:,.0f} MB",
                            results[key].rss < 150 * MB))
    if ok("inspect"):
        targets.append(("inspect", "inspect wall < 0.5 s", f"{results['inspect'].wall:.2f} s",
                        results["inspect"].wall < 0.5))
    for key in ("copy", "copy-nofsync"):
        if ok(key) and ok("cp"):
            r = results[key].wall / results["cp"].wall
            targets.append((key, "wall ≤ 1.5× cp", f"{key}: {r:.2f}× cp", r <= 1.5))
        if ok(key):
            targets.append((key, "peak RSS < 1 GB", f"{key}: {results[key].rss / MB:,.0f} MB", results[key].rss < GB))
    if ok("scale4") and ok("copy"):
        r = results["scale4"].rss / results["copy"].rss
        ratios["scale4"] = f"RSS {r:.2f}× copy"
        targets.append(("scale4", "scale-4 peak RSS ≤ 1.10× scale-1",
                        f"{results['scale4'].rss / MB:,.0f} / {results['copy'].rss / MB:,.0f} MB = {r:.2f}×", r <= 1.10))
    if ok("edit"):
        if ok("load-edit"):
            r = results["edit"].wall / results["load-edit"].wall
            targets.append(("edit", "edit wall ≤ 0.8× load-everything", f"{r:.2f}×", r <= 0.8))
        targets.append(("edit", "edit peak RSS < 1 GB", f"{results['edit'].rss / MB:,.0f} MB", results["edit"].rss < GB))

    for key, wall, rss in (("many-inspect", 2.0, 300 * MB), ("many-copy", 20.0, 500 * MB)):
        if ok(key):
            targets.append((key, f"{args.many:,} tensors: wall < {wall:.0f} s", f"{results[key].wall:.1f} s",
                            results[key].wall < wall))
            targets.append((key, f"{args.many:,} tensors: peak RSS < {rss / MB:.0f} MB",
                            f"{results[key].rss / MB:,.0f} MB ({results[key].rss / args.many:,.0f} B per tensor, whole process)",
                            results[key].rss < rss))

    if ok("average") and ok("average-t2t"):
        r = results["average"].wall / results["average-t2t"].wall
        targets.append(("average", "average wall ≤ 0.5× t2t-style", f"{r:.2f}×", r <= 0.5))
        bare_rss = results["bare"].rss if ok("bare") or ("bare" in results and results["bare"].rss) else 0
        ours, peer = results["average"].rss - bare_rss, results["average-t2t"].rss - bare_rss
        if bare_rss and peer > 0:
            targets.append(("average", "average RSS above TF ≤ ¼ of t2t-style",
                            f"{ours / MB:,.0f} / {peer / MB:,.0f} MB = {ours / peer:.2f}", ours <= peer / 4))
    if ok("average-2") and ok("average-16"):
        r = results["average-16"].rss / results["average-2"].rss
        targets.append(("average-16", "average RSS, 16 vs 2 inputs, within 10%", f"{r:.2f}×", r <= 1.10))

    general = [
        "Wall time is measured around each child process; peak RSS is `/usr/bin/time`'s maximum resident set "
        "size of the child (the largest process in its tree). CPU is user + system seconds."
        if runner.use_time else
        "Wall time is measured around each child process; peak RSS is getrusage(RUSAGE_CHILDREN).ru_maxrss "
        "from a fresh wrapper process per measurement. CPU is user + system seconds.",
        "`cp` and `ckptsurgery copy --no-fsync` leave dirty pages for the kernel to write back later; "
        "`ckptsurgery copy`/`edit` (default) fsync every file before publishing, like `cp`+`sync`.",
        "load-copy: `tf.train.load_checkpoint`, one eager `tf.Variable(reader.get_tensor(name))` per tensor "
        "(whole model resident), then `tf.compat.v1.train.Saver(var_list={name: variable}).save(None, dst, "
        "write_meta_graph=False)`.",
        "load-edit: reads ALL tensors (optimizer slots included) into a dict of numpy arrays, builds eager "
        "`tf.Variable`s for the non-optimizer ones under renamed keys (`^bert/` → `encoder/`), Saver.save as above.",
        "graph-edit (emulated graph recipe, no meta graph exists for a synthetic checkpoint): in a `tf.Graph`, "
        "`tf.compat.v1.get_variable` for every checkpoint variable (scope `old/`, shapes/dtypes from the reader), "
        "`Saver(var_list={ckpt name: var}).restore(sess, src)` in a `Session`, new variables (scope `new/`) for "
        "the non-optimizer ones, one `tf.compat.v1.assign(new, old)` each run as one group, then "
        "`Saver(var_list={renamed: new var}).save(sess, dst, write_meta_graph=False)`.",
        "Every output is checked after its run (names, shapes, dtypes, and values of sample tensors), "
        "outside the timing. The cp rows run at least 3 times, the others --repeat times (median shown, "
        "range and count in brackets).",
    ]
    keep = {"load-copy:": "load-copy", "load-edit:": "load-edit", "graph-edit ": "graph-edit"}
    general = [n for n in general if not any(n.startswith(k) and v not in results for k, v in keep.items())]
    notes[:0] = general

    context = {"date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
               + f" (benchmark took {(time.perf_counter() - started) / 60:.0f} min; command: scripts/bench "
               + " ".join(argv if argv is not None else sys.argv[1:]) + ")", "ckpt": ckpt_desc,
               "cache": "dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before each run" if cold
               else "warm cache: could not drop caches; each row ran once untimed first", "ratios": ratios,
               "load": f"{load_start} / {_loadavg()}"}
    text = render(results, targets, info, context, notes)
    out_md = Path(args.out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    shutil.rmtree(out, ignore_errors=True)
    if not args.keep_data:
        for folder in generated:
            if not args.data_dir or data not in Path(folder).parents:  # --data-dir: never deleted
                shutil.rmtree(folder, ignore_errors=True)
    print()
    print(text)
    log(f"done; results in {_short(str(out_md))}")
    return 0 if all(r.ok for r in results.values()) else 1


def child_generate_big(nbytes: str, prefix: str) -> None:
    """One float32 tensor ``big/kernel`` of about ``nbytes`` bytes, written in 64 MB chunks with its
    CRC32C computed on the way and an index from ckptsurgery's own writer: bounded memory, no TF."""
    import google_crc32c
    import numpy as np

    from ckptsurgery.io.index import IndexEntry
    from ckptsurgery.io.index_writer import write_index
    from ckptsurgery.io.table import mask

    cols = 4096
    rows = max(1, int(float(nbytes)) // (4 * cols))
    rng = np.random.default_rng(0)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    crc, done, step = 0, 0, (64 << 20) // (4 * cols)
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        while done < rows:
            chunk = rng.standard_normal((min(step, rows - done), cols), dtype=np.float32).tobytes()
            crc = google_crc32c.extend(crc, chunk)
            f.write(chunk)
            done += min(step, rows - done)
        os.fsync(f.fileno())
    size = rows * cols * 4
    write_index(prefix, 1, [IndexEntry("big/kernel", 1, (rows, cols), 0, 0, size, mask(crc), key=b"big/kernel")])
    os.sync()


CHILDREN["_generate_big"] = child_generate_big


def run_big_rows(args, runner, results, targets, notes, log) -> None:
    """copy, cast to bfloat16 and a 4-way average of a checkpoint holding one --big-gb float32 tensor.

    The average's 4 inputs are hard links of one data file (its own index each): the rows measure
    memory, which does not depend on the values, and the disk holds one input plus one output."""
    data, out = BENCH / "data", BENCH / "out"
    folder = data / f"big-{args.big_gb:g}GB"
    prefix = folder / "model.ckpt"
    if not Path(str(prefix) + ".index").is_file():
        log(f"checkpoint with one {args.big_gb:g} GB tensor:")
        shutil.rmtree(folder, ignore_errors=True)
        _check_call([sys.executable, __file__, "_generate_big", str(args.big_gb * GB), str(prefix)],
                    BENCH / "logs" / "generate-big.log")
    size = Path(str(prefix) + ".data-00000-of-00001").stat().st_size
    label = f"one {size / GB:.1f} GB float32 tensor"
    rows = [r for r in BIG_ROWS[:3] if r in args.rows]
    for row in rows:
        dst = out / row / "model.ckpt"
        if row == "big-copy":
            cmd, what, limit = cli("copy", str(prefix), str(dst), "--no-progress"), "copy", 150 * MB
        elif row == "big-cast":
            cmd = cli("edit", str(prefix), str(dst), "--cast", "float32:bfloat16", "--no-progress")
            what, limit = "edit --cast float32:bfloat16", GB
        else:
            inputs = []
            for i in range(4):
                link = folder / f"avg-{i}" / "model.ckpt"
                link.parent.mkdir(exist_ok=True)
                for suffix in (".index", ".data-00000-of-00001"):
                    target = Path(str(link) + suffix)
                    if not target.exists():
                        os.link(str(prefix) + suffix, target)
                inputs.append(str(link))
            cmd, what, limit = cli("average", *inputs, "--out", str(dst), "--no-progress"), "average of 4", GB
        results[row] = runner.measure(row, f"`ckptsurgery {what}` of {label}", cmd, cleanup=[out / row],
                                      verify=["copy" if row == "big-copy" else "shapes", str(dst), str(prefix)],
                                      repeat=1)
        if results[row].ok:
            targets.append((row, f"peak RSS < {limit / MB:,.0f} MB", f"{results[row].rss / MB:,.0f} MB",
                            results[row].rss < limit))
    notes.append(f"big-*: {label}, generated by this script (64 MB chunks, CRC32C on the way, index by "
                 "ckptsurgery's own writer); outputs are checked by name, shape and dtype (values are not "
                 "compared: TF's reader would load the whole tensor). big-average's 4 inputs are hard links "
                 "of one data file.")
    if not args.keep_data:
        shutil.rmtree(folder, ignore_errors=True)


def _unshared_extents(paths: list[Path]) -> tuple[int, int, int]:
    """(extents, extents not shared with another file, bytes in those) over ``paths``, from ``filefrag -v``."""
    total = unshared = unshared_bytes = 0
    for path in paths:
        text = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True).stdout
        block = int(m.group(1)) if (m := re.search(r"blocks of (\d+) bytes", text)) else 4096
        for line in text.splitlines():
            m = re.match(r"\s*\d+:\s*\d+\.\.\s*\d+:\s*\d+\.\.\s*\d+:\s*(\d+):", line)
            if not m:
                continue
            total += 1
            if "shared" not in line:
                unshared += 1
                unshared_bytes += int(m.group(1)) * block
    return total, unshared, unshared_bytes


def run_reflink_rename(src, runner, results, targets, notes, log) -> None:
    """Rename-only edit (--no-crc-check) inside a loop-mounted XFS image made with reflink=1.

    Wall time beyond start-up (``inspect`` of the same checkpoint: imports plus index) and whether
    the output's data extents are shared with the input's (``filefrag -v``: no new extents)."""
    image, mnt = BENCH / "xfs.img", BENCH / "xfs"
    nbytes = sum(p.stat().st_size for p in Path(src).parent.glob(Path(src).name + ".*"))
    mounted = False
    try:
        if not shutil.which("mkfs.xfs"):
            raise RuntimeError("mkfs.xfs not installed (apt-get install xfsprogs)")
        image.unlink(missing_ok=True)
        with open(image, "wb") as f:
            f.truncate(int(nbytes * 2.3) + (1 << 30))  # sparse: disk use is what is written
        for cmd in (["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)],):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
        mnt.mkdir(exist_ok=True)
        r = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"mount -o loop refused: {r.stderr.strip() or r.returncode}")
        mounted = True
        log("reflink: copying the checkpoint into the XFS image ...")
        (mnt / "src").mkdir()
        subprocess.run(["cp", "--reflink=never", *(str(p) for p in Path(src).parent.glob(Path(src).name + ".*")),
                        str(mnt / "src")], check=True)
        os.sync()
        xsrc = str(mnt / "src" / Path(src).name)
        startup = runner.measure("reflink-startup", "`ckptsurgery inspect` of the same checkpoint (start-up)",
                                 cli("inspect", xsrc), repeat=3)
        results["reflink-startup"] = startup
        dst = mnt / "out" / "model.ckpt"
        dst.parent.mkdir()
        # --force: a warm-up run (when caches cannot be dropped) publishes first; the output stays
        # after the run, for filefrag
        cmd = cli("edit", xsrc, str(dst), "--rename", "^bert/", "encoder/", "--no-crc-check", "--no-progress",
                  "--force")
        results["reflink-rename"] = r = runner.measure(
            "reflink-rename", "`ckptsurgery edit --rename --no-crc-check` on XFS (reflink=1, loop image)", cmd,
            verify=["edit-rename", str(dst), xsrc], repeat=1)
        if r.ok and startup.ok:
            beyond = r.wall - startup.wall
            total, unshared, unshared_bytes = _unshared_extents(sorted(dst.parent.glob("model.ckpt.data-*")))
            targets.append(("reflink-rename", "rename on reflink fs: < 1 s beyond start-up",
                            f"{r.wall:.1f} s - {startup.wall:.1f} s start-up = {beyond:.1f} s", beyond < 1.0))
            targets.append(("reflink-rename", "rename on reflink fs: no new extents",
                            f"{unshared} of {total} data extents not shared ({unshared_bytes / MB:,.0f} MB)",
                            unshared == 0))
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        log(f"reflink-rename: skipped: {exc}")
        notes.append(f"reflink-rename: not measured: {exc}")
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)
        image.unlink(missing_ok=True)


def run_average(args, runner, results, ratios, notes, generated, available, log) -> None:
    """ckptsurgery average vs the tensor2tensor recipe; 2 vs 16 inputs for memory."""
    data, out = BENCH / "data", BENCH / "out"
    log("BERT-base checkpoints for averaging:")
    base_prefixes = []
    for i in range(8):
        spec = bert_spec(12, 768, adam=False, seed=100 + i, step=1000 * (i + 1))
        folder = data / f"avg-base-{i}"
        base_prefixes.append(ensure_checkpoint(folder, spec, log))
        generated.append(folder)
    size = bert_spec(12, 768, adam=False)["nbytes"]
    dst = out / "average" / "model.ckpt"
    if available:
        results["average"] = runner.measure(
            "average", f"`ckptsurgery average` of 8 × BERT-base ({size / GB:.2f} GB each)",
            cli("average", *base_prefixes, "--out", str(dst), "--no-progress"),
            cleanup=[out / "average"], verify=["average", str(dst), *base_prefixes], repeat=args.repeat)
    dst = out / "average-t2t" / "model.ckpt"
    results["average-t2t"] = runner.measure(
        "average-t2t", "tensor2tensor-style average of the same 8 (float64 accumulators, Variables + Saver)",
        [sys.executable, __file__, "_t2t_average", str(dst), *base_prefixes],
        cleanup=[out / "average-t2t"], verify=["average", str(dst), *base_prefixes], repeat=args.repeat)
    if available and results["average"].ok and results["average-t2t"].ok:
        ratios["average"] = f"{results['average'].wall / results['average-t2t'].wall:.2f}× t2t"
    notes.append("average-t2t: tensor2tensor avg_checkpoints.py recipe in eager TF2: float64 numpy accumulator "
                 "per variable for the whole model, each input read tensor by tensor and added, divided by N, "
                 "cast back, eager Variables + Saver.save.")
    if not available:
        notes.append("average: `ckptsurgery average` not available yet; only the tensor2tensor peer ran.")
        return
    log("small checkpoints for 2 vs 16 inputs:")
    small = []
    for i in range(16):
        spec = bert_spec(2, 768, adam=False, seed=200 + i, step=100 * (i + 1))
        folder = data / f"avg-small-{i}"
        small.append(ensure_checkpoint(folder, spec, log))
        generated.append(folder)
    for n in (2, 16):
        key = f"average-{n}"
        dst = out / key / "model.ckpt"
        results[key] = runner.measure(key, f"`ckptsurgery average` of {n} small (2-layer BERT-base) checkpoints",
                                      cli("average", *small[:n], "--out", str(dst), "--no-progress"),
                                      cleanup=[out / key], verify=["average", str(dst), *small[:n]],
                                      repeat=args.repeat)
    if results["average-2"].ok and results["average-16"].ok:
        ratios["average-16"] = f"RSS {results['average-16'].rss / results['average-2'].rss:.2f}× 2 inputs"


def run_cluster(args, runner, results, ratios, notes, generated, log) -> None:
    """Average 8 x BERT-base in one process and on an embedded 2-process Dask cluster, side by side.

    The command runs through a wrapper that prints the coordinator's own peak RSS (RUSAGE_SELF): the
    time wrapper's figure would include the worker processes it started.
    """
    data, out = BENCH / "data", BENCH / "out"
    log("BERT-base checkpoints for averaging (cluster row):")
    prefixes = []
    for i in range(8):
        folder = data / f"avg-base-{i}"
        prefixes.append(ensure_checkpoint(folder, bert_spec(12, 768, adam=False, seed=100 + i, step=1000 * (i + 1)),
                                          log))
        generated.append(folder)
    size = bert_spec(12, 768, adam=False)["nbytes"]
    wrapper = ("import resource, sys; from ckptsurgery.cli import main; rc = main(sys.argv[1:]); "
               "print('coordinator-rss-kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
               "sys.exit(rc)")
    own = {}
    for key, extra, label in (("cluster-1", [], "one process"), ("cluster-local2", ["--cluster", "local:2"],
                                                                  "--cluster local:2 (2 worker processes)")):
        dst = out / key / "model.ckpt"
        results[key] = runner.measure(
            key, f"`ckptsurgery average` of 8 × BERT-base ({size / GB:.2f} GB each), {label}",
            [sys.executable, "-c", wrapper, "average", *prefixes, "--out", str(dst), "--no-progress", *extra],
            cleanup=[out / key], verify=["average", str(dst), *prefixes], repeat=args.repeat)
        found = re.findall(r"coordinator-rss-kb (\d+)", (BENCH / "logs" / f"{key}.log").read_text())
        own[key] = int(found[-1]) * 1024 if found else None
    if all(results[k].ok for k in own):
        ratios["cluster-local2"] = f"{results['cluster-local2'].wall / results['cluster-1'].wall:.2f}× one process"
    notes.append("cluster: coordinator's own peak RSS (RUSAGE_SELF) " + ", ".join(
        f"{k} {v / MB:,.0f} MB" if v else f"{k} ?" for k, v in own.items())
        + "; the peak RSS column of cluster-local2 is the largest process (a worker), not the sum.")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:
        CHILDREN[sys.argv[1]](*sys.argv[2:])
        sys.exit(0)
    sys.exit(main())
