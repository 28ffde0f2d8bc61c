"""Capability: average and merge many checkpoints, restore the result into real TF objects.

Expected values are computed independently with numpy from what TensorFlow's
own reader returns for each input (float64 arithmetic, then cast to the
tensor's dtype), and results are read back through ``Saver.restore`` or
``tf.train.Checkpoint.restore``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.api import average, merge
from ckptsurgery.io.resolve import last_checkpoints
from ckptsurgery.plan.average import average_weights, plan_average
from ckptsurgery.merge_methods.linear import streaming_linear
from ckptsurgery.merge_methods.task_arithmetic import streaming_task_arithmetic
from ckptsurgery.plan.merge import MethodRule, Take, plan_merge
from ckptsurgery.recipe.sections import average_plan_from_spec, merge_call, merge_plan_from_spec
from ckptsurgery.errors import NonFiniteError, PlanError, RuleError, UsageError
from ckptsurgery.merge_methods import apply_method, derive_seed
from ckptsurgery.plan.optimizer_state import is_optimizer_state
from models import TinyModel, make_keras_model, restore_tf1, write_keras_checkpoint, write_tf1_checkpoint
from conftest import run_cli
from helpers import names

BF16 = tf.bfloat16.as_numpy_dtype
KEY = "/.ATTRIBUTES/VARIABLE_VALUE"


def read(prefix: str, name: str) -> np.ndarray:
    return np.asarray(tf.train.load_checkpoint(prefix).get_tensor(name))


def np_mean(arrays, weights=None) -> np.ndarray:
    """Independent numpy average: float64 weighted sum / sum of weights, cast to the input dtype."""
    weights = [1.0] * len(arrays) if weights is None else weights
    total = sum(w * np.asarray(a).astype(np.float64) for w, a in zip(weights, arrays))
    return (total / sum(weights)).astype(np.asarray(arrays[0]).dtype)


# -- fixtures: real TF checkpoints ------------------------------------------------------
@pytest.fixture(scope="module")
def tf1_runs(tmp_path_factory) -> list[str]:
    """Three TF1 Saver checkpoints (Adam, global_step 1, 2, 3), different values."""
    return [write_tf1_checkpoint(tmp_path_factory.mktemp(f"tf1_{i}"), steps=i + 1, seed=i) for i in range(3)]


def save_tiny(folder: Path, seed: int, **kwargs) -> tuple[str, TinyModel]:
    model = TinyModel(seed, **kwargs)
    return tf.train.Checkpoint(model=model).save(str(folder / "ckpt")), model


@pytest.fixture(scope="module")
def tf2_runs(tmp_path_factory) -> list[tuple[str, TinyModel]]:
    """Three tf.train.Checkpoint(model=TinyModel) saves with different values (bfloat16 scale, int64 step)."""
    return [save_tiny(tmp_path_factory.mktemp(f"tf2_{i}"), seed=i) for i in range(3)]


# -- average: TF1 ---------------------------------------------------------------------------
def test_tf1_mean_restores_with_saver_matches_numpy_and_drops_optimizer(tf1_runs, tmp_path):
    out = str(tmp_path / "avg" / "model.ckpt")
    result = average(tf1_runs, out, progress=False, memory_budget="100B")
    written = names(out)
    assert not any(is_optimizer_state(n) for n in written)
    assert {"encoder/dense/kernel/Adam", "beta1_power", "embed/table/Adam_1"} <= set(result.dropped)
    restored = restore_tf1(out, var_list_filter=lambda n: not is_optimizer_state(n))
    for name in ("encoder/dense/kernel", "encoder/dense/bias", "head/kernel", "embed/table"):
        expected = np_mean([read(p, name) for p in tf1_runs])
        assert restored[name].dtype == np.float32
        np.testing.assert_array_equal(restored[name], expected, err_msg=name)
    assert restored["global_step"] == 3  # integers come from the last input
    np.testing.assert_array_equal(restored["counts"], read(tf1_runs[-1], "counts"))
    assert list(restored["vocab"]) == list(read(tf1_runs[-1], "vocab"))


def test_keep_optimizer_averages_adam_slots_too(tf1_runs, tmp_path):
    out = str(tmp_path / "avg" / "model.ckpt")
    average(tf1_runs, out, keep_optimizer=True, progress=False)
    restored = restore_tf1(out)  # every variable, slots included: Saver.restore accepts the output
    for name in ("encoder/dense/kernel/Adam", "head/kernel/Adam_1", "beta1_power"):
        np.testing.assert_array_equal(restored[name], np_mean([read(p, name) for p in tf1_runs]), err_msg=name)
    # restore_tf1 folds partitioned slots into their variable's name, so read this one directly.
    name = "embed/table/Adam"
    np.testing.assert_array_equal(read(out, name), np_mean([read(p, name) for p in tf1_runs]))


def test_weights_and_first_int_policy(tf1_runs, tmp_path):
    out = str(tmp_path / "w" / "model.ckpt")
    average(tf1_runs, out, weights=[1, 2, 5], int_policy="first", progress=False)
    for name in ("encoder/dense/kernel", "embed/table"):
        expected = np_mean([read(p, name) for p in tf1_runs], [1.0, 2.0, 5.0])
        np.testing.assert_array_equal(read(out, name), expected, err_msg=name)
    assert read(out, "global_step") == 1


def test_ema_matches_the_direct_recursion(tf1_runs, tmp_path):
    decay = 0.7
    out = str(tmp_path / "ema" / "model.ckpt")
    average(tf1_runs, out, ema=decay, progress=False)
    for name in ("encoder/dense/kernel", "head/kernel"):
        xs = [read(p, name).astype(np.float64) for p in tf1_runs]
        e = xs[0]
        for x in xs[1:]:
            e = decay * e + (1 - decay) * x
        np.testing.assert_allclose(read(out, name), e.astype(np.float32), rtol=1e-6, atol=1e-7, err_msg=name)
    w = average_weights(3, ema=decay)
    assert w == pytest.approx([decay**2, (1 - decay) * decay, 1 - decay]) and sum(w) == pytest.approx(1.0)


def test_int_policy_error_refuses_non_floating_tensors(tf1_runs):
    with pytest.raises(PlanError, match=r"'counts' is int32.*int policy 'error'"):
        plan_average(tf1_runs, int_policy="error")


def test_bad_weights_and_options_are_usage_errors(tf1_runs):
    with pytest.raises(UsageError, match="got 2 weights for 3 checkpoints"):
        plan_average(tf1_runs, weights=[1, 2])
    with pytest.raises(UsageError, match="either weights or an EMA"):
        plan_average(tf1_runs, weights=[1, 2, 3], ema=0.5)
    with pytest.raises(UsageError, match=r"EMA decay must be in \[0, 1\)"):
        plan_average(tf1_runs, ema=1.5)
    with pytest.raises(UsageError, match="unknown int policy"):
        plan_average(tf1_runs, int_policy="mean")


def test_dry_run_plan_sums_input_bytes_and_writes_nothing(tf1_runs, tmp_path):
    out = tmp_path / "dry" / "model.ckpt"
    plan = average(tf1_runs, out, dry_run=True)
    assert isinstance(plan, cs.Plan) and not out.parent.exists()
    entry = next(e for e in plan.entries if e.name == "encoder/dense/kernel")
    assert entry.method == "linear" and len(entry.inputs) == 3
    assert entry.nbytes_in == 3 * 4 * 8 * 4 and entry.nbytes_out == 4 * 8 * 4
    assert "linear(ckpt1" in plan.render() and "ckpt3" in plan.render()


# -- average: TF2 ---------------------------------------------------------------------------
def test_tf2_mean_restores_with_assert_consumed_and_bfloat16_is_exact(tf2_runs, tmp_path):
    out = str(tmp_path / "avg" / "ckpt-1")
    average([p for p, _ in tf2_runs], out, progress=False)
    fresh = TinyModel(seed=50)
    tf.train.Checkpoint(model=fresh).restore(out).assert_consumed()
    models = [m for _, m in tf2_runs]
    for get in (lambda m: m.encoder.w, lambda m: m.decoder.b, lambda m: m.head):
        np.testing.assert_array_equal(get(fresh).numpy(), np_mean([get(m).numpy() for m in models]))
    assert fresh.scale.dtype == tf.bfloat16
    expected_scale = (sum(m.scale.numpy().astype(np.float64) for m in models) / 3).astype(BF16)
    np.testing.assert_array_equal(fresh.scale.numpy().view(np.uint16), expected_scale.view(np.uint16))
    assert not np.array_equal(fresh.scale.numpy(), models[0].scale.numpy())
    assert fresh.step.numpy() == models[-1].step.numpy() == 9  # int64 from the last input


def test_keras_average_drops_optimizer_and_restores_model(tmp_path):
    runs = [write_keras_checkpoint(tmp_path / f"k{i}", seed=i) for i in range(2)]
    out = str(tmp_path / "avg" / "ckpt")
    result = average([p for p, _, _ in runs], out, progress=False)
    assert result.dropped and all("optimizer" in n for n in result.dropped)
    fresh, _ = make_keras_model(seed=42, compile=False)
    tf.train.Checkpoint(model=fresh).restore(out).assert_consumed()
    for i, v in enumerate(fresh.variables):
        np.testing.assert_array_equal(v.numpy(), np_mean([m.variables[i].numpy() for _, m, _ in runs]))


def test_mismatched_shapes_name_the_tensor_and_both_inputs(tmp_path):
    a, _ = save_tiny(tmp_path / "a", seed=0, head_width=3)
    b, _ = save_tiny(tmp_path / "b", seed=1, head_width=4)
    with pytest.raises(PlanError) as err:
        plan_average([a, b])
    message = str(err.value)
    assert "model/head/.ATTRIBUTES/VARIABLE_VALUE" in message
    assert "float32[6, 3]" in message and "float32[6, 4]" in message
    assert a in message and b in message and "input 2" in message


def test_intersection_averages_shared_names_and_prunes_the_object_graph(tmp_path):
    plain, m0 = save_tiny(tmp_path / "plain", seed=0)
    m1 = TinyModel(seed=1)
    extra = tf.train.Checkpoint(model=m1, extra=tf.Variable([1.0, 2.0])).save(str(tmp_path / "extra" / "ckpt"))
    with pytest.raises(PlanError, match=r"'extra/\.ATTRIBUTES/VARIABLE_VALUE' is in input 2 .* not in input 1.*--intersection"):
        plan_average([plain, extra])
    out = str(tmp_path / "avg" / "ckpt")
    result = average([plain, extra], out, intersection=True, progress=False)
    assert "extra" + KEY in result.dropped and "extra" + KEY not in names(out)
    fresh = TinyModel(seed=9)
    tf.train.Checkpoint(model=fresh).restore(out).assert_consumed()  # graph from the last input, pruned
    np.testing.assert_array_equal(fresh.decoder.w.numpy(), np_mean([m0.decoder.w.numpy(), m1.decoder.w.numpy()]))


def test_nonfinite_result_fails_naming_the_tensor_unless_allowed(tmp_path):
    prefixes = []
    for i, values in enumerate(([1.0, np.inf], [3.0, 5.0])):
        prefix = str(tmp_path / f"in{i}" / "ckpt")
        os.makedirs(os.path.dirname(prefix))
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["w", "n"], shape_and_slices=["", ""],
                          tensors=[tf.constant(values, tf.float32), tf.constant(i, tf.int64)])
        prefixes.append(prefix)
    out = tmp_path / "out" / "ckpt"
    with pytest.raises(NonFiniteError, match="'w'"):
        average(prefixes, out, progress=False)
    assert not Path(str(out) + ".index").exists()
    cli = run_cli("average", *prefixes, "--out", out)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and "'w'" in cli.stderr, cli.stderr  # usage: the flag
    average(prefixes, out, allow_nonfinite=True, progress=False)
    np.testing.assert_array_equal(read(str(out), "w"), [2.0, np.inf])


# -- last N ------------------------------------------------------------------------------
@pytest.fixture
def run_folder(tmp_path) -> tuple[Path, list[str], dict[str, float]]:
    """A training folder saved by CheckpointManager at steps whose text order is not numeric order."""
    folder = tmp_path / "run"
    v = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(folder), max_to_keep=10)
    prefixes, values = [], {}
    for i, step in enumerate((5, 40, 300, 1000, 20000)):
        v.assign(float(i * i + 1))
        prefixes.append(manager.save(checkpoint_number=step))
        values[prefixes[-1]] = float(i * i + 1)
    return folder, prefixes, values


def test_last_n_from_state_file_then_from_step_numbers(run_folder, tmp_path):
    folder, prefixes, values = run_folder
    assert last_checkpoints(folder, 3) == prefixes[-3:]
    out = str(tmp_path / "avg" / "ckpt")
    average(last_checkpoints(folder, 3), out, progress=False)
    assert read(out, "v" + KEY) == np.float32(np.mean([values[p] for p in prefixes[-3:]]))
    os.remove(folder / "checkpoint")
    assert last_checkpoints(folder, 4) == prefixes[-4:]  # 300 < 1000 < 20000, not text order
    with pytest.raises(UsageError, match="last 6 checkpoints but there are only 5"):
        last_checkpoints(folder, 6)


# -- merge ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    return {alias: save_tiny(root / alias, seed) for alias, seed in (("base", 10), ("a", 11), ("b", 12))}


def sources(pair, *aliases):
    return {alias: pair[alias][0] for alias in aliases}


def test_merge_encoder_from_a_decoder_from_b_renamed_restores_into_tiny_model(pair, tmp_path):
    out = str(tmp_path / "m" / "ckpt-1")
    merge(sources(pair, "a", "b"), out, progress=False, takes=[
        Take("a", r"^model/(encoder|head|scale|step)/|^save_counter/"),
        Take("b", "^model/encoder/", [("^model/encoder/", "model/decoder/")]),
    ])
    a, b = pair["a"][1], pair["b"][1]
    fresh = TinyModel(seed=77)
    tf.train.Checkpoint(model=fresh).restore(out).assert_consumed()
    np.testing.assert_array_equal(fresh.encoder.w.numpy(), a.encoder.w.numpy())
    np.testing.assert_array_equal(fresh.decoder.w.numpy(), b.encoder.w.numpy())
    np.testing.assert_array_equal(fresh.decoder.b.numpy(), b.encoder.b.numpy())
    np.testing.assert_array_equal(fresh.head.numpy(), a.head.numpy())
    assert fresh.step.numpy() == a.step.numpy()


def test_merge_conflict_without_method_is_a_plan_error(pair):
    with pytest.raises(PlanError, match=r"'model/decoder/b/.ATTRIBUTES/VARIABLE_VALUE' comes from two sources: "
                                        r"a:.* and b:.*--method"):
        plan_merge(sources(pair, "a", "b"), [Take("a", "."), Take("b", ".")])


def test_merge_conflicts_combined_with_linear_and_slerp_equal_apply_method(pair, tmp_path):
    out = str(tmp_path / "m" / "ckpt")
    merge(sources(pair, "a", "b"), out, progress=False,
                takes=[Take("a", "."), Take("b", "^model/(encoder|scale|head)/")],
                methods=[MethodRule("^model/encoder/", "linear", weights={"b": 0.75, "a": 0.25}),
                         MethodRule("^model/scale/", "slerp", {"t": 0.3}),
                         MethodRule("^model/head/", "linear")])
    pa, pb = pair["a"][0], pair["b"][0]
    for name, method, kwargs in (("model/encoder/w" + KEY, "linear", {"weights": [0.25, 0.75]}),
                                 ("model/scale" + KEY, "slerp", {"t": 0.3}),
                                 ("model/head" + KEY, "linear", {})):
        xa, xb = read(pa, name), read(pb, name)
        # apply_method takes float64 (it refuses bfloat16 arrays); the conversion is exact.
        expected = apply_method(method, [xa.astype(np.float64), xb.astype(np.float64)], **kwargs).astype(xa.dtype)
        got = read(out, name)
        assert got.dtype == xa.dtype
        np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8), err_msg=name)
    np.testing.assert_array_equal(read(out, "model/decoder/w" + KEY), read(pa, "model/decoder/w" + KEY))
    fresh = TinyModel(seed=3)
    tf.train.Checkpoint(model=fresh).restore(out).assert_consumed()


def test_merge_ties_and_dare_use_the_base_and_per_tensor_seeds(pair, tmp_path):
    out = str(tmp_path / "m" / "ckpt")
    plan = merge(sources(pair, "base", "a", "b"), out, progress=False, base="base", seed=7,
                       takes=[Take("a", "."), Take("b", "^model/encoder/")],
                       methods=[MethodRule("^model/encoder/", "ties", {"density": 0.5}),
                                MethodRule("^model/decoder/", "dare", {"drop_rate": 0.3}, weights=[0.5])],
                       dry_run=True)
    entry = next(e for e in plan.entries if e.name == "model/decoder/w" + KEY)
    assert [r.source for r in entry.inputs] == ["base", "a"] and entry.method_params["base_input"] is True
    merge(sources(pair, "base", "a", "b"), out, progress=False, base="base", seed=7,
                takes=[Take("a", "."), Take("b", "^model/encoder/")],
                methods=[MethodRule("^model/encoder/", "ties", {"density": 0.5}),
                         MethodRule("^model/decoder/", "dare", {"drop_rate": 0.3}, weights=[0.5])])
    p0, pa, pb = (pair[k][0] for k in ("base", "a", "b"))
    name = "model/encoder/w" + KEY
    expected = apply_method("ties", [read(pa, name), read(pb, name)], base=read(p0, name),
                            seed=derive_seed(7, name), density=0.5).astype(np.float32)
    np.testing.assert_array_equal(read(out, name), expected)
    for name in ("model/decoder/w" + KEY, "model/decoder/b" + KEY):
        expected = apply_method("dare", [read(pa, name)], base=read(p0, name), weights=[0.5],
                                seed=derive_seed(7, name), drop_rate=0.3).astype(np.float32)
        np.testing.assert_array_equal(read(out, name), expected, err_msg=name)
    np.testing.assert_array_equal(read(out, "model/head" + KEY), read(pa, "model/head" + KEY))


def test_merge_rule_errors_before_any_data_is_read(pair):
    srcs = sources(pair, "a", "b")
    with pytest.raises(RuleError, match=r"take 'model/encodr/' from 'a' matches no tensor; closest names: model/encoder/"):
        plan_merge(srcs, [Take("a", "model/encodr/")])
    with pytest.raises(RuleError, match=r"take '\^model/head/' from 'b': --rename 'nothing' 'x' matches no tensor"):
        plan_merge(srcs, [Take("b", "^model/head/", [("nothing", "x")])])
    with pytest.raises(RuleError, match="method linear for 'decodr' matches no tensor"):
        plan_merge(srcs, [Take("a", "."), Take("b", "^model/encoder/")],
                         methods=[MethodRule("^model/encoder/", "linear"), MethodRule("decodr", "linear")])
    with pytest.raises(PlanError, match=r"'model/step/.ATTRIBUTES/VARIABLE_VALUE': method linear for '\.' cannot combine int64"):
        plan_merge(srcs, [Take("a", "."), Take("b", ".")], methods=[MethodRule(".", "linear")])
    with pytest.raises(PlanError, match="needs a base; pass --base"):
        plan_merge(srcs, [Take("a", "model/head")], methods=[MethodRule(".", "ties")])
    with pytest.raises(RuleError, match="slerp needs exactly 2 inputs"):
        plan_merge(sources(pair, "base", "a", "b"), [Take("a", "model/head"), Take("b", "model/head"),
                                                           Take("base", "model/head")],
                         methods=[MethodRule(".", "slerp")])
    with pytest.raises(RuleError, match=r"method slerp for '\.': slerp: t must be in \[0, 1\]"):
        plan_merge(srcs, [Take("a", ".")], methods=[MethodRule(".", "slerp", {"t": 2})])
    with pytest.raises(RuleError, match="method slerp for '.' combines nothing"):
        plan_merge(srcs, [Take("a", "model/head"), Take("b", "model/encoder")], methods=[MethodRule(".", "slerp")])
    with pytest.raises(UsageError, match="unknown merge method 'tiez'"):
        MethodRule(".", "tiez")
    with pytest.raises(UsageError, match="unknown source 'c'"):
        plan_merge(srcs, [Take("c", ".")])


def test_merge_spec_dict_checks_keys_and_builds_the_same_plan(pair, tmp_path):
    spec = {"sources": sources(pair, "a", "b"),
            "take": [{"source": "a", "pattern": "."},
                     {"source": "b", "pattern": "^model/encoder/", "rename": {"/encoder/": "/decoder/"}}],
            "methods": [{"pattern": "^model/decoder/", "method": "slerp", "params": {"t": 0.25}}]}
    plan = merge_plan_from_spec(spec)
    direct = plan_merge(spec["sources"], [Take("a", "."), Take("b", "^model/encoder/", [("/encoder/", "/decoder/")])],
                              methods=[MethodRule("^model/decoder/", "slerp", {"t": 0.25})])
    assert plan.to_json() == direct.to_json()
    with pytest.raises(UsageError, match="merge: unknown key 'tkae'"):
        merge_plan_from_spec({**spec, "tkae": []})
    with pytest.raises(UsageError, match=r"merge.take\[1\]: unknown key 'renames'; allowed: pattern, rename, source"):
        merge_plan_from_spec({**spec, "take": [spec["take"][0], {"source": "b", "pattern": ".", "renames": {}}]})
    with pytest.raises(UsageError, match=r"merge.methods\[0\]: unknown key 'param'"):
        merge_plan_from_spec({**spec, "methods": [{"pattern": ".", "method": "linear", "param": {}}]})
    out = str(tmp_path / "spec" / "ckpt")
    call = merge_call({**spec, "output": out}, progress=False)
    result = cs.merge(*call.args, **call.kwargs)
    assert result.prefix == out
    fresh = TinyModel(seed=1)
    tf.train.Checkpoint(model=fresh).restore(out).assert_consumed()
    avg = average_plan_from_spec({"checkpoints": [pair["a"][0], pair["b"][0]], "ema": 0.5})
    with pytest.raises(UsageError, match="average: unknown key 'emma'"):
        average_plan_from_spec({"checkpoints": [pair["a"][0]], "emma": 0.5})
    assert avg.entries[0].method_params["weights"] == [0.5, 0.5]


def test_merge_runs_from_a_yaml_recipe(pair, tmp_path):
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(
        "merge:\n"
        f"  sources: {{a: {pair['a'][0]}, b: {pair['b'][0]}}}\n"
        "  take:\n    - {source: a, pattern: '.'}\n    - {source: b, pattern: '^model/head/'}\n"
        "  methods:\n    - {pattern: '^model/head/', method: linear, weights: {a: 1, b: 3}}\n"
        "output: out/ckpt\n")
    result, _ = cs.run_recipe(recipe, progress=False)
    name = "model/head" + KEY
    expected = np_mean([read(pair["a"][0], name), read(pair["b"][0], name)], [1.0, 3.0])
    np.testing.assert_array_equal(read(str(tmp_path / "out" / "ckpt"), name), expected)
    assert result.prefix == str(tmp_path / "out" / "ckpt")


# -- streaming accumulation is the same arithmetic as apply_method ------------------------------
def test_streaming_accumulation_is_bit_identical_to_apply_method():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(5, 7)).astype(np.float32) for _ in range(4)]
    xs[0][0, 0], xs[1][0, 0], xs[2][0, 0], xs[3][0, 0] = -0.0, -0.0, -0.0, -0.0
    base = rng.normal(size=(5, 7)).astype(np.float32)
    for weights in (None, [0.1, 0.2, 0.3, 0.4]):
        want = apply_method("linear", xs, weights=weights)
        got = streaming_linear(iter(xs), 4, weights, True)
        assert want.tobytes() == got.tobytes()
        want = apply_method("task_arithmetic", xs, weights=weights, base=base)
        assert want.tobytes() == streaming_task_arithmetic(base.astype(np.float64), iter(xs), 4, weights).tobytes()


# -- CLI -----------------------------------------------------------------------------------
def test_cli_average_last_n_json(cli, run_folder, tmp_path):
    folder, prefixes, values = run_folder
    out = tmp_path / "cli_avg" / "ckpt"
    proc = cli("average", "--last", "2", folder, "--out", out, "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert '"tensors"' in proc.stdout and proc.stderr.strip() == ""
    assert read(str(out), "v" + KEY) == np.float32(np.mean([values[p] for p in prefixes[-2:]]))


def test_cli_merge_happy_path(cli, pair, tmp_path):
    out = tmp_path / "cli_merge" / "ckpt"
    proc = cli("merge", "--source", f"a={pair['a'][0]}", "--source", f"b={pair['b'][0]}",
               "--take", "a", ".", "--take", "b", "^model/encoder/", "--rename", "/encoder/", "/decoder/",
               "--method", "^model/decoder/", "linear", "weights=a:1,b:3", "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}:")
    name = "model/decoder/w" + KEY
    expected = np_mean([read(pair["a"][0], name), read(pair["b"][0], "model/encoder/w" + KEY)], [1.0, 3.0])
    np.testing.assert_array_equal(read(str(out), name), expected)


def test_cli_mismatch_is_exit_2_with_one_line(cli, tmp_path):
    a, _ = save_tiny(tmp_path / "a", seed=0, head_width=3)
    b, _ = save_tiny(tmp_path / "b", seed=1, head_width=5)
    proc = cli("average", a, b, "--out", tmp_path / "out" / "ckpt")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckptsurgery: error: tensor 'model/head/")
    assert not (tmp_path / "out").exists()


def test_cli_help_teaches_with_examples(cli):
    for command in ("average", "merge"):
        proc = cli(command, "--help")
        assert proc.returncode == 0 and "examples:" in proc.stdout
    assert "ties" in cli("merge", "--help").stdout
