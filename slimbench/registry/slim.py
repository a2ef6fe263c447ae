"""slimbench's own optimizers: SlimAdam (V averaged over per-layer dims K) and the AdaLayer variants."""
from __future__ import annotations

from typing import Any

from torch import nn

from slimbench.io import FormatError
from slimbench.optim import AdaLayer, SlimAdam
from slimbench.registry._common import trainable
from slimbench.registry.errors import err
from slimbench.registry.spec import OptimizerSpec
from slimbench.rules import RulesLike

SLIMADAM_DEFAULT_RULES = "paper"  # what rules=None means for slimadam (recorded in run results)


def _slimadam(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, *,
              rules: RulesLike = SLIMADAM_DEFAULT_RULES, **extra: Any):
    # The model itself, not its parameters: SlimAdam reads each weight's layout from its module.
    return SlimAdam(model, lr=lr, betas=betas, weight_decay=weight_decay,
                    rules=SLIMADAM_DEFAULT_RULES if rules is None else rules, **extra)


def _adalayer(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    return AdaLayer(trainable(model), lr=lr, betas=betas, weight_decay=weight_decay, **extra)


def _adalayer_ln_tl(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    return AdaLayer(trainable(model), lr=lr, betas=betas, weight_decay=weight_decay,
                    full_adam=("norm", "head"), **extra)


_SLIMADAM_ERRORS = (
    err({"rules": {"no.such.param": "fan_in"}}, r"rule 'no\.such\.param' matches no parameter.*closest parameter names",
        "rule-unknown-param"),
    err({"rules": {"*": [5]}}, r"rule '\*' for parameter .*: dim 5 does not exist for a tensor",
        "rule-dim-out-of-range"),
    err({"rules": {"*": "sideways"}}, "unknown dims 'sideways'", "rule-unknown-dims-label"),
    err({"rules": {"type:nonsense": "fan_in"}}, "rule 'type:nonsense': unknown layer type", "rule-unknown-layer-type"),
    err({"rules": 3}, "rules must be None, 'paper', a dict, a RuleSet, a path or a list of those; got int",
        "rules-wrong-type"),
    err({"rules": "/nonexistent/slimbench-rules.json"}, "slimbench-rules.json: no such file", "rules-file-missing",
        FormatError),
    err({"fused": True, "fused_backend": "cuda-graphs"}, "Invalid fused_backend: 'cuda-graphs'", "fused-backend-unknown"))

SPECS: tuple[OptimizerSpec, ...] = (
    OptimizerSpec("slimadam", _slimadam, "SlimAdam: V averaged over per-layer dims K (paper rules by default)",
                  "slim", foreach=True, fused=True, needs_names=True, uses_rules=True,
                  sharded=True,  # tests/test_distributed.py: FSDP2 == one process; per-rank ledger == audit
                  default_rules=SLIMADAM_DEFAULT_RULES, state_class="slimbench.SlimAdam",
                  second_moment_keys=("exp_avg_sq",),  # at its reduced shape: K dims of size 1
                  state_rule="exp_avg (param shape) + exp_avg_sq (K dims of size 1) + 0-d step",
                  transient_budget=(1.0, 3.0), extras=("eps", "maximize", "fused_backend"),
                  own_error_inputs=_SLIMADAM_ERRORS),
    OptimizerSpec("adalayer", _adalayer, "AdaLayer: one V per tensor (Zhao et al. 2024)", "slim", foreach=True,
                  sharded=True,  # tests/test_distributed.py: FSDP2 == one process; per-rank ledger == audit
                  state_class="slimbench.AdaLayer", second_moment_keys=("exp_avg_sq",),  # 0-d
                  state_rule="exp_avg (param shape) + 0-d exp_avg_sq + 0-d step", transient_budget=(1.0, 3.0),
                  extras=("eps",)),
    OptimizerSpec("adalayer+ln+tl", _adalayer_ln_tl, "AdaLayer with full Adam for norms and the last layer",
                  "slim", foreach=True, needs_names=True, state_class="slimbench.AdaLayer",
                  sharded=True,  # tests/test_distributed.py::test_registry_optimizers_under_fsdp2: == one process at 2, 3 ranks
                  second_moment_keys=("exp_avg_sq",),
                  state_rule="as adalayer; norms, biases and head keep a full exp_avg_sq",
                  transient_budget=(1.0, 3.0), extras=("eps",)),
)
