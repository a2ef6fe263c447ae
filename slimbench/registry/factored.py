"""Factored and per-dim second moments: torch's and torch-optimizer's Adafactor, CAME and SM3.

Each keeps V as a few vectors per weight instead of a tensor of its shape. The third-party ones check
only lr and weight decay, so the bad values they would train on silently are checked here.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimbench.registry._common import import_optimizer, trainable, trainable_params
from slimbench.registry.errors import err
from slimbench.registry.spec import OptimizerSpec


def _adafactor(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    # torch.optim.Adafactor keeps no first moment; betas do not apply (beta2 follows beta2_decay).
    eps = extra.get("eps")
    if eps is not None and not (isinstance(eps, (tuple, list)) and len(eps) == 2):
        # torch would fail with "'float' object is not subscriptable"
        raise ValueError(f"adafactor: eps is a pair (eps1, eps2), eps1 None for the dtype's eps; got {eps!r}")
    return torch.optim.Adafactor(trainable(model), lr=lr, weight_decay=weight_decay, **extra)


def _adafactor_tf(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    cls = import_optimizer("adafactor-tf", "torch_optimizer", "Adafactor")
    # Shazeer & Stern's defaults (beta1=None: no first moment), with the given lr instead of the
    # relative-step schedule so runs compare at equal learning rates.
    kw: dict[str, Any] = {"beta1": None, "relative_step": False, "scale_parameter": False, "warmup_init": False}
    kw.update(extra)
    # torch-optimizer checks only lr and weight_decay; each of these trains silently on a bad value.
    eps2 = kw.get("eps2", (1e-30, 1e-3))
    if not (isinstance(eps2, (tuple, list)) and len(eps2) == 2 and all(e >= 0 for e in eps2)):
        raise ValueError(f"adafactor-tf: eps2 must be a pair of values >= 0, got {eps2!r}")
    if not kw.get("clip_threshold", 1.0) > 0:
        raise ValueError(f"adafactor-tf: clip_threshold must be > 0, got {kw['clip_threshold']!r}")
    if not kw.get("decay_rate", -0.8) <= 0:  # beta2_t = 1 - t^decay_rate is <= 0 for a positive rate
        raise ValueError(f"adafactor-tf: decay_rate must be <= 0, got {kw['decay_rate']!r}")
    if kw["beta1"] is not None and not 0.0 <= kw["beta1"] < 1.0:
        raise ValueError(f"adafactor-tf: beta1 must be None or in [0, 1), got {kw['beta1']!r}")
    return cls(trainable_params(model), lr=lr, weight_decay=weight_decay, **kw)


def _sm3(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    cls = import_optimizer("sm3", "pytorch_optimizer", "SM3")
    # weight_decay is 0 here: the spec's weight_decay=False makes build_optimizer refuse any other value
    momentum = extra.pop("momentum", betas[0])
    return cls(trainable_params(model), lr=lr, momentum=momentum, **extra)


def _came(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    cls = import_optimizer("came", "pytorch_optimizer", "CAME")
    beta3 = extra.pop("beta3", 0.9999)
    # CAME divides the update's RMS by clip_threshold and clamps at 1: a value <= 0 silently turns clipping off.
    if not extra.get("clip_threshold", 1.0) > 0:
        raise ValueError(f"came: clip_threshold must be > 0, got {extra['clip_threshold']!r}")
    return cls(trainable_params(model), lr=lr, betas=(betas[0], betas[1], beta3),
               weight_decay=weight_decay, **extra)


_ADAFACTOR_ERRORS = (
    err({"eps": 1e-3}, r"adafactor: eps is a pair \(eps1, eps2\)", "scalar-eps"),
    err({"eps": (-1e-30, 1e-3)}, "epsilon1 should be >= 0", "negative-eps1"),
    err({"eps": (None, -1e-3)}, "epsilon2 should be >= 0", "negative-eps2"),
    err({"d": 0.5}, "Clipping threshold d should be >= 1", "d-below-1"),
    err({"beta2_decay": 0.8}, "beta2_decay should be <= 0", "positive-beta2-decay"))
_ADAFACTOR_TF_ERRORS = (
    err({"eps2": (1e-30, -1e-3)}, "adafactor-tf: eps2 must be a pair of values >= 0", "negative-eps2"),
    err({"clip_threshold": 0.0}, "adafactor-tf: clip_threshold must be > 0", "zero-clip"),
    err({"decay_rate": 0.8}, "adafactor-tf: decay_rate must be <= 0", "positive-decay-rate"),
    err({"beta1": 1.0}, r"adafactor-tf: beta1 must be None or in \[0, 1\)", "beta1-is-1"))
_SM3_ERRORS = (
    err({"momentum": -0.5}, r"momentum must be in the range \[0\.0, 1\.0\)", "negative-momentum"),
    err({"momentum": 1.0}, r"momentum must be in the range \[0\.0, 1\.0\)", "momentum-is-1"),
    err({"beta": 1.5}, r"beta must be in the range \[0\.0, 1\.0\]", "beta-above-1"))
_CAME_ERRORS = (
    err({"beta3": 1.5}, r"beta3 must be in the range \[0\.0, 1\.0\]", "beta3-above-1"),
    err({"eps1": -1.0}, "eps1 must be non-negative", "negative-eps1"),
    err({"eps2": -1.0}, "eps2 must be non-negative", "negative-eps2"),
    err({"clip_threshold": 0.0}, "came: clip_threshold must be > 0", "zero-clip"))

# Second moments: factored row/col vectors for >= 2-D tensors, a full V for 1-D ones. CAME's exp_avg_res_*
# (its confidence) are extra state, not V.
_ROW_COL = ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq")
SPECS: tuple[OptimizerSpec, ...] = (
    OptimizerSpec("adafactor", _adafactor, "torch.optim.Adafactor (factored V, no first moment)", "factored",
                  foreach=True, eps_pair=True, state_class="torch.Adafactor",
                  second_moment_keys=("row_var", "col_var", "variance"),
                  state_rule="row_var + col_var (>= 2-D) or variance (1-D) + step",
                  transient_budget=(1.0, 4.0), extras=("beta2_decay", "eps", "d", "maximize"),
                  own_error_inputs=_ADAFACTOR_ERRORS),
    OptimizerSpec("adafactor-tf", _adafactor_tf, "torch-optimizer Adafactor (Shazeer & Stern; lr given, "
                  "no relative step)", "factored", package="torch-optimizer", module="torch_optimizer",
                  state_class="torch_optimizer.Adafactor", second_moment_keys=_ROW_COL,
                  state_rule="exp_avg_sq_row + exp_avg_sq_col (>= 2-D) or exp_avg_sq (1-D) + RMS",
                  transient_budget=(0.0, 6.0), extras=("beta1", "eps2", "clip_threshold", "decay_rate",
                                                       "scale_parameter", "relative_step", "warmup_init"),
                  own_error_inputs=_ADAFACTOR_TF_ERRORS),
    OptimizerSpec("sm3", _sm3, "SM3 (Anil et al. 2019): one accumulator per tensor dim, momentum 0.9",
                  "factored", foreach=True, weight_decay=False, package="pytorch-optimizer",
                  module="pytorch_optimizer", state_class="pytorch_optimizer.SM3",
                  second_moment_keys=("accumulator_*",),  # accumulator_0 .. accumulator_{d-1}, one per dim
                  state_rule="momentum_buffer (param shape) + accumulator_i per dim", sensible_lr=0.1,
                  transient_budget=(1.0, 4.0), extras=("momentum", "beta", "eps"), own_error_inputs=_SM3_ERRORS),
    OptimizerSpec("came", _came, "CAME (Luo et al. 2023): factored V plus confidence, pytorch-optimizer",
                  "factored", foreach=True, package="pytorch-optimizer", module="pytorch_optimizer",
                  state_class="pytorch_optimizer.CAME", second_moment_keys=_ROW_COL,
                  state_rule="exp_avg + exp_avg_sq_row/col + exp_avg_res_row/col (>= 2-D)", sensible_lr=1e-3,
                  transient_budget=(2.5, 6.0), extras=("beta3", "clip_threshold", "eps1", "eps2", "ams_bound"),
                  own_error_inputs=_CAME_ERRORS),
)
