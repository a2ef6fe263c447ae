"""slimbench.snr.stats: known values, the definition's edge cases, and properties (hypothesis)."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from slimbench.snr.stats import candidates, dims_key, key_dims, snr, snr_all, snr_many

V = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]])


@pytest.mark.parametrize("dims, expected", [((0,), 20.259259259), ((1,), 6.0), ((0, 1), 6.75)])
def test_known_values(dims, expected):
    assert snr(V, dims) == pytest.approx(expected, rel=1e-9)


def test_known_values_all_candidates_and_float32_input():
    got = snr_all(V.float())
    assert list(got) == ["0", "1", "0,1"]
    assert got["0"] == pytest.approx(20.259259259) and got["1"] == 6.0 and got["0,1"] == 6.75


def test_constant_slices_are_dropped_and_all_dropped_is_inf():
    assert snr(torch.ones(3, 4), 1) == math.inf  # not NaN
    zeros_row = torch.tensor([[0.0, 0.0], [1.0, 3.0]])  # 0/0 row dropped, not NaN
    assert snr(zeros_row, 1) == pytest.approx(4.0)


def test_nan_in_v_is_visible():
    assert math.isnan(snr(torch.tensor([[1.0, float("nan")], [1.0, 2.0]]), 1))


def test_negative_dims_and_int_dims():
    assert snr(V, -1) == snr(V, 1) == snr(V, (1,))


@pytest.mark.parametrize("dims, match", [((), "at least one dim"), ((2,), "does not exist"), ((0, 0), "repeat")])
def test_bad_dims(dims, match):
    with pytest.raises(ValueError, match=match):
        snr(V, dims)


@pytest.mark.parametrize("shape, expected", [
    ((5,), []),
    ((3, 4), [(0,), (1,), (0, 1)]),
    ((8, 3, 3, 3), [(0,), (1, 2, 3), (0, 1, 2, 3)]),  # conv: fan_out, fan_in, all
    ((1, 7), [(1,), (0, 1)]),  # a size-1 K changes nothing: not a candidate
    ((1, 1, 16), [(1, 2), (0, 1, 2)]),  # ViT class token
])
def test_candidates(shape, expected):
    assert candidates(shape) == expected


def test_keys_round_trip():
    assert dims_key((0, 1)) == "0,1" and key_dims("0,1") == (0, 1) and key_dims("1") == (1,)


def test_snr_many_matches_single_calls():
    torch.manual_seed(0)
    ts = [torch.rand(4, 6), torch.rand(3, 2, 2, 2), torch.rand(5, 5)]
    many = snr_many(ts, [candidates(t.shape) for t in ts])
    for t, got in zip(ts, many):
        assert got == {dims_key(k): snr(t, k) for k in candidates(t.shape)}


# ---- properties --------------------------------------------------------------------------------------

shapes = st.lists(st.integers(1, 5), min_size=2, max_size=3).map(tuple)


def _exact_snr(a: np.ndarray, dims: tuple[int, ...]) -> float:
    """Exact rational reference: the definition written out with Fractions, no floating point."""
    a = np.moveaxis(a, dims, tuple(range(len(dims))))
    flat = a.reshape(math.prod(a.shape[: len(dims)]), -1)
    ratios = []
    for col in flat.T:
        xs = [Fraction(float(x)) for x in col]
        mean = sum(xs) / len(xs)
        var = sum((x - mean) ** 2 for x in xs) / len(xs)
        if var != 0:
            ratios.append(mean * mean / var)
    return math.inf if not ratios else float(sum(ratios) / len(ratios))


@st.composite
def grid_tensor(draw):
    """V >= 0 on a grid of 1/8: exactly representable, with ties (constant slices) likely."""
    shape = draw(shapes)
    n = math.prod(shape)
    ints = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
    return np.array(ints, dtype=np.float64).reshape(shape) / 8


@given(grid_tensor())
def test_agrees_with_exact_reference(a):
    for k in candidates(a.shape):
        assert snr(torch.from_numpy(a), k) == pytest.approx(_exact_snr(a, k), rel=1e-9)


def _numpy_snr(a: np.ndarray, dims: tuple[int, ...]) -> float:
    mean = a.mean(axis=dims)
    var = a.var(axis=dims)  # population variance (ddof=0)
    keep = var != 0
    return math.inf if not keep.any() else float((mean[keep] ** 2 / var[keep]).mean())


@given(shapes, st.integers(0, 2**31 - 1), st.floats(-20, 5))
def test_agrees_with_numpy_on_continuous_data(shape, seed, log_scale):
    a = np.random.default_rng(seed).gamma(0.7, 10.0 ** log_scale, size=shape)
    for k in candidates(shape):
        assert snr(torch.from_numpy(a), k) == pytest.approx(_numpy_snr(a, k), rel=1e-9)


@given(grid_tensor(), st.floats(1e-12, 1e12))
def test_scale_invariant(a, c):
    t = torch.from_numpy(a)
    for k in candidates(a.shape):
        assert snr(t * c, k) == pytest.approx(snr(t, k), rel=1e-9)


@given(grid_tensor(), st.integers(0, 2**31 - 1))
def test_permutation_invariant_along_k(a, seed):
    """Shuffling entries within each slice along K (and slices among themselves) changes nothing."""
    rng = np.random.default_rng(seed)
    t = torch.from_numpy(a)
    for k in candidates(a.shape):
        rest = [d for d in range(a.ndim) if d not in k]
        moved = np.moveaxis(a, k + tuple(rest), tuple(range(a.ndim)))
        flat = moved.reshape(math.prod(a.shape[d] for d in k), -1).copy()
        for j in range(flat.shape[1]):
            flat[:, j] = rng.permutation(flat[:, j])  # within-slice shuffle along K
        flat = flat[:, rng.permutation(flat.shape[1])]  # reorder the other positions
        assert snr(torch.from_numpy(flat), (0,)) == pytest.approx(snr(t, k), rel=1e-9)


@given(st.floats(0.5, 20.0), st.integers(0, 2**31 - 1))
def test_gamma_snr_tends_to_k(shape_k, seed):
    """iid Gamma(k, theta): mean^2 / var = (k theta)^2 / (k theta^2) = k, whatever theta."""
    a = np.random.default_rng(seed).gamma(shape_k, 3e-7, size=(4, 20_000))
    assert snr(torch.from_numpy(a), 1) == pytest.approx(shape_k, rel=0.1)
