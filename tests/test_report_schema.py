"""The extra_info schema the suites write through, and the one best-lr / lr-band rule."""
from __future__ import annotations

import pytest

from slimbench.bench import extra_info as xi
from slimbench.bench.best_lr import best_lr, lr_band, lr_means, lr_width


def test_make_stamps_kind_and_version_and_refuses_unknown_layouts():
    info = xi.make(xi.KIND_STEP, optimizer="adamw", shape="gpt-3m", device="cpu", dtype="float32", foreach=True,
                   threads=1, extra=3)
    assert info["kind"] == "step_time" and info["extra_version"] == xi.EXTRA_VERSION and info["extra"] == 3
    with pytest.raises(ValueError, match="unknown extra_info kind 'nope'"):
        xi.make("nope")
    with pytest.raises(ValueError, match="kind 'training': missing diverged, final_val_loss"):
        xi.make(xi.KIND_TRAINING, task="gpt", preset="tiny", optimizer="adamw", lr=1e-3, seed=0, steps=5)


def test_step_ratio_one_meaning():
    assert xi.reference_path("slimadam_fused") == "adamw_fused"
    assert xi.reference_path("slimadam_compiled") == "adamw_fused"
    assert xi.reference_path("slimadam_loop") == "adamw_foreach"
    info = {"kind": "fused_step", "ms_per_step": {"adamw_fused": {"min": 2.0}, "adamw_foreach": {"min": 4.0},
                                                  "slimadam_compiled": {"min": 3.0}, "slimadam_loop": {"min": 8.0}}}
    assert xi.fused_step_ratio(info, "slimadam_compiled") == 1.5
    assert xi.step_ratio({"extra_info": {**info, "path": "slimadam_loop"}}) == 2.0
    assert xi.step_ratio({"extra_info": {"kind": "step_time", "ratio_to_adamw_foreach": 0.9}}) == 0.9
    assert xi.step_ratio({"extra_info": {"kind": "training"}}) is None
    assert xi.ratio(1.0, 0.0) is None and xi.ratio(float("nan"), 1.0) is None


def test_best_lr_disqualifies_diverged_lrs_and_breaks_ties_low():
    means = lr_means({1e-3: [2.0, 2.2], 3e-3: [1.9, None], 1e-2: [2.1, 2.1]})
    assert means == {1e-3: pytest.approx(2.1), 3e-3: None, 1e-2: pytest.approx(2.1)}
    assert best_lr(means) == 1e-3  # 1e-2 ties; 3e-3 is lower but a seed diverged
    assert best_lr({1e-3: None}) is None and lr_band({1e-3: None}) is None and lr_width({}) is None


def test_lr_band_is_contiguous_around_the_best():
    means = {1e-4: 2.09, 1e-3: 2.2, 3e-3: 2.0, 1e-2: 2.08, 3e-2: 2.11}
    assert lr_band(means) == (3e-3, 1e-2)  # 1e-4 is within 5% but not contiguous; 3e-2 is 5.5% worse
    assert lr_width(means) == pytest.approx(1e-2 / 3e-3)
    assert lr_band(means, within=0.1) == (1e-4, 3e-2)
    assert lr_band({**means, 1e-2: None}) == (3e-3, 3e-3)
