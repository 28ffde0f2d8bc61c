"""Tests for ckptsurgery.merge_methods, organised by capability.

Expected values are written out by hand (or via an independent numpy formula)
so each test pins concrete numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from ckptsurgery.errors import UsageError
from ckptsurgery.merge_methods import (
    MergeMethod,
    apply_method,
    available_methods,
    derive_seed,
    get_method,
)
from ckptsurgery.merge_methods.ties import trim


def arr(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


class TestRegistry:
    def test_available_methods_sorted(self):
        assert available_methods() == [
            "dare",
            "linear",
            "slerp",
            "task_arithmetic",
            "ties",
        ]

    def test_get_method_metadata(self):
        m = get_method("ties")
        assert isinstance(m, MergeMethod)
        assert m.name == "ties"
        assert m.needs_base is True
        assert m.params == {"density": 0.2, "lambda": 1.0}
        assert "Yadav" in m.paper and "2023" in m.paper
        assert get_method("dare").params == {"drop_rate": 0.5}
        assert get_method("slerp").params == {"t": 0.5}
        assert get_method("linear").params == {"normalize": True}
        assert get_method("task_arithmetic").params == {}
        assert "Ilharco" in get_method("task_arithmetic").paper
        assert "Shoemake" in get_method("slerp").paper
        assert "Yu" in get_method("dare").paper

    def test_needs_base_flags(self):
        flags = {n: get_method(n).needs_base for n in available_methods()}
        assert flags == {
            "dare": True,
            "linear": False,
            "slerp": False,
            "task_arithmetic": True,
            "ties": True,
        }

    def test_method_is_frozen(self):
        with pytest.raises(Exception):
            get_method("linear").name = "other"  # type: ignore[misc]

    def test_name_lookup_accepts_dash_and_case(self):
        assert get_method("Task-Arithmetic").name == "task_arithmetic"

    def test_every_module_documents_its_paper(self):
        import importlib

        for name in available_methods():
            module = importlib.import_module(f"ckptsurgery.merge_methods.{name}")
            assert module.__doc__ and "Paper" in module.__doc__, name

    def test_derive_seed_is_stable_and_name_dependent(self):
        assert derive_seed(0, "dense/kernel") == derive_seed(0, "dense/kernel")
        assert derive_seed(0, "dense/kernel") != derive_seed(0, "dense/bias")
        assert derive_seed(0, "x") != derive_seed(1, "x")
        assert 0 <= derive_seed(7, "x") < 2**32


# --------------------------------------------------------------------------
# Common behaviour of apply_method
# --------------------------------------------------------------------------


class TestApplyMethod:
    def test_returns_float64_from_lower_precision_inputs(self):
        a = np.array([1.0, 2.0], dtype=np.float16)
        b = np.array([3.0, 5.0], dtype=np.float32)
        out = apply_method("linear", [a, b])
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, [2.0, 3.5])

    def test_integer_inputs_computed_in_float(self):
        out = apply_method("linear", [np.array([1, 2]), np.array([2, 3])])
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, [1.5, 2.5])

    def test_preserves_shape(self):
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        out = apply_method("linear", [a, a * 3])
        assert out.shape == (2, 3)
        np.testing.assert_array_equal(out, [[0, 2, 4], [6, 8, 10]])

    def test_scalar_tensor(self):
        out = apply_method("linear", [np.float32(1.0), np.float32(4.0)])
        assert out.shape == ()
        assert out == 2.5

    def test_inputs_not_modified(self):
        a, b, base = arr(1, 2), arr(3, 4), arr(0, 0)
        apply_method("ties", [a, b], base=base, density=1.0)
        apply_method("dare", [a, b], base=base)
        np.testing.assert_array_equal(a, [1, 2])
        np.testing.assert_array_equal(b, [3, 4])
        np.testing.assert_array_equal(base, [0, 0])


# --------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------


class TestLinear:
    def test_plain_average(self):
        out = apply_method("linear", [arr(1, 2, 3), arr(3, 4, 5), arr(5, 0, 1)])
        np.testing.assert_allclose(out, [3.0, 2.0, 3.0])

    def test_weighted_normalized(self):
        # (1*[2,4] + 3*[6,8]) / 4 = [20,28]/4 = [5,7]
        out = apply_method("linear", [arr(2, 4), arr(6, 8)], weights=[1, 3])
        np.testing.assert_allclose(out, [5.0, 7.0])

    def test_weighted_unnormalized(self):
        # 1*[2,4] + 3*[6,8] = [20, 28]
        out = apply_method(
            "linear", [arr(2, 4), arr(6, 8)], weights=[1, 3], normalize=False
        )
        np.testing.assert_allclose(out, [20.0, 28.0])

    def test_matches_numpy_average(self):
        rng = np.random.default_rng(1)
        ts = [rng.normal(size=(4, 5)) for _ in range(3)]
        w = [0.2, 0.5, 1.3]
        out = apply_method("linear", ts, weights=w)
        np.testing.assert_allclose(out, np.average(np.stack(ts), axis=0, weights=w))

    def test_single_input_is_identity(self):
        np.testing.assert_array_equal(apply_method("linear", [arr(1.5, -2)]), [1.5, -2])

    def test_zero_weight_sum_rejected(self):
        with pytest.raises(UsageError, match="sum to 0"):
            apply_method("linear", [arr(1), arr(2)], weights=[1, -1])

    def test_normalize_must_be_bool(self):
        with pytest.raises(UsageError, match="normalize"):
            apply_method("linear", [arr(1), arr(2)], normalize="false")


# --------------------------------------------------------------------------
# task_arithmetic
# --------------------------------------------------------------------------


class TestTaskArithmetic:
    def test_default_lambdas_are_one(self):
        # base [1,1]; tau1 = [1,2], tau2 = [-1,3] -> [1,1] + [0,5] = [1,6]
        out = apply_method(
            "task_arithmetic", [arr(2, 3), arr(0, 4)], base=arr(1, 1)
        )
        np.testing.assert_allclose(out, [1.0, 6.0])

    def test_weights_are_lambdas(self):
        # [1,1] + 0.5*[1,2] + 2*[-1,3] = [1,1] + [0.5,1] + [-2,6] = [-0.5, 8]
        out = apply_method(
            "task_arithmetic", [arr(2, 3), arr(0, 4)], base=arr(1, 1), weights=[0.5, 2]
        )
        np.testing.assert_allclose(out, [-0.5, 8.0])

    def test_negative_lambda_subtracts(self):
        # [0,0] - 1*[2,-2] = [-2, 2]
        out = apply_method("task_arithmetic", [arr(2, -2)], base=arr(0, 0), weights=[-1])
        np.testing.assert_allclose(out, [-2.0, 2.0])

    def test_matches_formula_random(self):
        rng = np.random.default_rng(2)
        base = rng.normal(size=(3, 3))
        ts = [rng.normal(size=(3, 3)) for _ in range(3)]
        w = [0.3, -0.7, 1.1]
        expected = base + sum(wi * (t - base) for wi, t in zip(w, ts))
        out = apply_method("task_arithmetic", ts, base=base, weights=w)
        np.testing.assert_allclose(out, expected)


# --------------------------------------------------------------------------
# ties
# --------------------------------------------------------------------------


class TestTies:
    # Hand-worked example, density 0.5 on 6 elements -> keep top k = 3.
    BASE = arr(1, -1, 0.5, 2, 0, 1)
    TAU1 = arr(4, -1, 2, 0.5, -3, 6)  # trimmed -> [4, 0, 0, 0, -3, 6]
    TAU2 = arr(-2, 3, 1, 0.2, -2, 2)  # 3rd |x| is 2, tie -> [-2, 3, 0, 0, -2, 2]
    TAU3 = arr(1, -2, 0, 0.1, 4, 0.5)  # trimmed -> [1, -2, 0, 0, 4, 0]
    # sum of trimmed  = [3, 1, 0, 0, -1, 8] -> elected [+, +, 0, 0, -, +]
    # disjoint mean   = [(4+1)/2, 3, 0, 0, (-3-2)/2, (6+2)/2]
    #                 = [2.5, 3, 0, 0, -2.5, 4]

    def thetas(self) -> list[np.ndarray]:
        return [self.BASE + t for t in (self.TAU1, self.TAU2, self.TAU3)]

    def test_trim_keeps_top_k_and_threshold_ties(self):
        np.testing.assert_array_equal(trim(self.TAU1, 0.5), [4, 0, 0, 0, -3, 6])
        np.testing.assert_array_equal(trim(self.TAU2, 0.5), [-2, 3, 0, 0, -2, 2])
        np.testing.assert_array_equal(trim(self.TAU3, 0.5), [1, -2, 0, 0, 4, 0])

    def test_trim_keeps_at_least_one(self):
        np.testing.assert_array_equal(trim(arr(1, -5, 2), 0.01), [0, -5, 0])

    def test_hand_worked_example(self):
        out = apply_method("ties", self.thetas(), base=self.BASE, density=0.5)
        np.testing.assert_allclose(out, self.BASE + arr(2.5, 3, 0, 0, -2.5, 4))
        np.testing.assert_allclose(out, [3.5, 2.0, 0.5, 2.0, -2.5, 5.0])

    def test_lambda_scales_merged_vector(self):
        out = apply_method(
            "ties", self.thetas(), base=self.BASE, density=0.5, **{"lambda": 2.0}
        )
        np.testing.assert_allclose(out, [6.0, 5.0, 0.5, 2.0, -5.0, 9.0])

    def test_sign_tie_gives_zero(self):
        # task vectors [3] and [-3] sum to 0 -> no elected sign -> base unchanged
        out = apply_method("ties", [arr(13.0), arr(7.0)], base=arr(10.0), density=1.0)
        np.testing.assert_allclose(out, [10.0])

    def test_weights_scale_task_vectors(self):
        # density 1 keeps everything:
        # tau1 = 1*[2,-2] = [2,-2]; tau2 = 0.5*[6, 2] = [3, 1]
        # sum = [5, -1] -> elected [+, -]; mean = [(2+3)/2, -2] = [2.5, -2]
        out = apply_method(
            "ties",
            [arr(2, -2), arr(6, 2)],
            base=arr(0, 0),
            weights=[1.0, 0.5],
            density=1.0,
        )
        np.testing.assert_allclose(out, [2.5, -2.0])

    def test_default_density_is_point_two(self):
        # 10 elements, density 0.2 -> keep the 2 largest |x|: 9 and -8
        tau = arr(1, 2, 3, 4, 5, 6, 7, -8, 9, 0.5)
        out = apply_method("ties", [tau], base=np.zeros(10))
        np.testing.assert_allclose(out, [0, 0, 0, 0, 0, 0, 0, -8, 9, 0])

    def test_invalid_density(self):
        with pytest.raises(UsageError, match="density"):
            apply_method("ties", [arr(1)], base=arr(0), density=0.0)
        with pytest.raises(UsageError, match="density"):
            apply_method("ties", [arr(1)], base=arr(0), density=1.5)


# --------------------------------------------------------------------------
# dare
# --------------------------------------------------------------------------


class TestDare:
    def setup_method(self):
        rng = np.random.default_rng(123)
        self.base = rng.normal(size=(50, 40))
        self.ts = [self.base + rng.normal(size=(50, 40)) for _ in range(2)]

    def test_deterministic_for_seed(self):
        a = apply_method("dare", self.ts, base=self.base, seed=5)
        b = apply_method("dare", self.ts, base=self.base, seed=5)
        np.testing.assert_array_equal(a, b)

    def test_different_seed_differs(self):
        a = apply_method("dare", self.ts, base=self.base, seed=5)
        b = apply_method("dare", self.ts, base=self.base, seed=6)
        assert not np.allclose(a, b)

    def test_documented_seeding_and_rescale(self):
        p, seed, w = 0.7, 11, [0.5, 2.0]
        expected = self.base.copy()
        for i, (wi, t) in enumerate(zip(w, self.ts)):
            drop = np.random.default_rng(seed + i).random(t.shape) < p
            expected += wi * np.where(drop, 0.0, (t - self.base) / (1 - p))
        out = apply_method(
            "dare", self.ts, base=self.base, weights=w, seed=seed, drop_rate=p
        )
        np.testing.assert_allclose(out, expected)

    def test_survivors_rescaled_and_drop_fraction(self):
        tau = np.full(100_000, 2.0)
        out = apply_method("dare", [tau], base=np.zeros_like(tau), drop_rate=0.9)
        kept = out[out != 0.0]
        np.testing.assert_allclose(kept, 20.0)  # 2 / (1 - 0.9)
        assert abs(np.mean(out == 0.0) - 0.9) < 0.01

    def test_expected_value_approximately_preserved(self):
        rng = np.random.default_rng(0)
        tau = rng.uniform(0.5, 1.5, size=200_000)  # mean ~1.0
        out = apply_method("dare", [tau], base=np.zeros_like(tau), drop_rate=0.8, seed=3)
        assert abs(out.mean() - tau.mean()) < 0.02
        assert abs(out.sum() / tau.sum() - 1.0) < 0.02

    def test_drop_rate_zero_equals_task_arithmetic(self):
        w = [0.4, 1.5]
        out = apply_method(
            "dare", self.ts, base=self.base, weights=w, drop_rate=0.0, seed=9
        )
        ta = apply_method("task_arithmetic", self.ts, base=self.base, weights=w)
        np.testing.assert_allclose(out, ta)

    def test_default_drop_rate_is_half(self):
        tau = np.ones(100_000)
        out = apply_method("dare", [tau], base=np.zeros_like(tau))
        assert set(np.unique(out)) <= {0.0, 2.0}
        assert abs(np.mean(out == 0.0) - 0.5) < 0.01

    def test_invalid_drop_rate(self):
        with pytest.raises(UsageError, match="drop_rate"):
            apply_method("dare", [arr(1)], base=arr(0), drop_rate=1.0)
        with pytest.raises(UsageError, match="drop_rate"):
            apply_method("dare", [arr(1)], base=arr(0), drop_rate=-0.1)

    def test_negative_seed_rejected(self):
        with pytest.raises(UsageError, match="seed"):
            apply_method("dare", [arr(1)], base=arr(0), seed=-1)


# --------------------------------------------------------------------------
# slerp
# --------------------------------------------------------------------------


class TestSlerp:
    def test_orthogonal_unit_vectors_midpoint(self):
        out = apply_method("slerp", [arr(1, 0), arr(0, 1)])
        np.testing.assert_allclose(out, [0.70710678, 0.70710678], rtol=1e-7)

    def test_orthogonal_unit_vectors_t_third(self):
        # theta = pi/2: sin((1-t)pi/2), sin(t pi/2) at t=1/3 -> [cos 30°, sin 30°]
        out = apply_method("slerp", [arr(1, 0), arr(0, 1)], t=1 / 3)
        np.testing.assert_allclose(out, [np.sqrt(3) / 2, 0.5], rtol=1e-12)

    def test_endpoints(self):
        a, b = arr(1, 2, 3), arr(-2, 0.5, 1)
        np.testing.assert_allclose(apply_method("slerp", [a, b], t=0.0), a, atol=1e-12)
        np.testing.assert_allclose(apply_method("slerp", [a, b], t=1.0), b, atol=1e-12)

    def test_uses_original_unnormalized_vectors(self):
        # a=[2,0], b=[0,4]; theta=pi/2, t=0.5 -> sin(pi/4)/1 * (a + b)
        out = apply_method("slerp", [arr(2, 0), arr(0, 4)], t=0.5)
        np.testing.assert_allclose(out, [np.sqrt(2), 2 * np.sqrt(2)], rtol=1e-12)

    def test_matches_formula_on_2d_tensor(self):
        rng = np.random.default_rng(4)
        a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
        t = 0.3
        va, vb = a.ravel(), b.ravel()
        theta = np.arccos(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))
        expected = (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)
        out = apply_method("slerp", [a, b], t=t)
        assert out.shape == (3, 4)
        np.testing.assert_allclose(out, expected, rtol=1e-12)

    def test_colinear_falls_back_to_linear(self):
        # parallel vectors: [1,2] and [2,4] -> lerp at 0.25 = [1.25, 2.5]
        out = apply_method("slerp", [arr(1, 2), arr(2, 4)], t=0.25)
        np.testing.assert_allclose(out, [1.25, 2.5])

    def test_zero_vector_falls_back_to_linear(self):
        out = apply_method("slerp", [arr(0, 0), arr(2, 4)], t=0.25)
        np.testing.assert_allclose(out, [0.5, 1.0])

    def test_three_inputs_rejected(self):
        with pytest.raises(UsageError, match="exactly 2"):
            apply_method("slerp", [arr(1, 0), arr(0, 1), arr(1, 1)])

    def test_one_input_rejected(self):
        with pytest.raises(UsageError, match="exactly 2"):
            apply_method("slerp", [arr(1, 0)])

    def test_t_out_of_range(self):
        with pytest.raises(UsageError, match="t must be in"):
            apply_method("slerp", [arr(1, 0), arr(0, 1)], t=1.5)

    def test_weights_rejected(self):
        with pytest.raises(UsageError, match="weights"):
            apply_method("slerp", [arr(1, 0), arr(0, 1)], weights=[1, 1])


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class TestErrors:
    def test_unknown_method_suggests_closest(self):
        with pytest.raises(UsageError) as exc:
            get_method("lineer")
        msg = str(exc.value)
        assert "'lineer'" in msg
        assert "did you mean 'linear'" in msg
        for name in available_methods():
            assert name in msg
        assert "\n" not in msg

    def test_unknown_method_via_apply(self):
        with pytest.raises(UsageError, match="did you mean 'ties'"):
            apply_method("tie", [arr(1)])

    def test_unknown_method_no_close_match(self):
        with pytest.raises(UsageError) as exc:
            get_method("zzzzzz")
        assert "did you mean" not in str(exc.value)
        assert "available: dare, linear, slerp, task_arithmetic, ties" in str(exc.value)

    def test_unknown_param_names_method_and_param(self):
        with pytest.raises(UsageError) as exc:
            apply_method("linear", [arr(1), arr(2)], densty=0.3)
        msg = str(exc.value)
        assert "'linear'" in msg and "'densty'" in msg

    def test_param_of_other_method_rejected(self):
        with pytest.raises(UsageError, match="'ties'.*'drop_rate'"):
            apply_method("ties", [arr(1)], base=arr(0), drop_rate=0.1)

    def test_shape_mismatch(self):
        with pytest.raises(UsageError, match=r"shape mismatch.*\[2\].*\[3\]"):
            apply_method("linear", [arr(1, 2), arr(1, 2, 3)])

    def test_base_shape_mismatch(self):
        with pytest.raises(UsageError, match="base has shape"):
            apply_method("task_arithmetic", [arr(1, 2)], base=arr(0, 0, 0))

    @pytest.mark.parametrize("name", ["task_arithmetic", "ties", "dare"])
    def test_missing_base(self, name):
        with pytest.raises(UsageError, match=f"'{name}' needs a base"):
            apply_method(name, [arr(1, 2), arr(3, 4)])

    @pytest.mark.parametrize("name", ["task_arithmetic", "ties", "dare"])
    def test_missing_base_direct_call(self, name):
        with pytest.raises(UsageError, match="needs a base"):
            get_method(name).func([arr(1, 2)], weights=None, base=None, seed=0)

    def test_base_given_to_method_without_base(self):
        with pytest.raises(UsageError, match="does not use a base"):
            apply_method("linear", [arr(1), arr(2)], base=arr(0))

    def test_wrong_number_of_weights(self):
        with pytest.raises(UsageError, match="2 weights for 3 inputs"):
            apply_method("linear", [arr(1), arr(2), arr(3)], weights=[1, 2])

    def test_nonfinite_weight(self):
        with pytest.raises(UsageError, match="finite"):
            apply_method("linear", [arr(1), arr(2)], weights=[1, float("nan")])

    def test_no_tensors(self):
        with pytest.raises(UsageError, match="at least one"):
            apply_method("linear", [])

    def test_non_numeric_dtype(self):
        with pytest.raises(UsageError, match="dtype"):
            apply_method("linear", [np.array(["a"]), np.array(["b"])])

    def test_errors_are_usage_errors_with_exit_code_2(self):
        with pytest.raises(UsageError) as exc:
            get_method("nope")
        assert exc.value.exit_code == 2
