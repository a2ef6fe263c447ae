"""The registry table and its entry points: :data:`REGISTRY`, :func:`get_spec`, :func:`build_optimizer`
(the checks every optimizer shares, then its factory) and :func:`available`."""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimbench.optim.slimadam import check_adam_hyper
from slimbench.registry._common import dist_version
from slimbench.registry.adammini import SPECS as ADAM_MINI
from slimbench.registry.factored import SPECS as FACTORED
from slimbench.registry.others import SPECS as OTHERS
from slimbench.registry.slim import SPECS as SLIM
from slimbench.registry.spec import OptimizerSpec, OptimizerUnavailable
from slimbench.registry.torch_baselines import SPECS as TORCH_BASELINES
from slimbench.rules import RulesLike

# One entry per optimizer, family by family (the order `optimizers` lists and `--optimizers all` runs).
REGISTRY: dict[str, OptimizerSpec] = {s.name: s for s in (*TORCH_BASELINES, *SLIM, *ADAM_MINI, *FACTORED, *OTHERS)}

_IMPL_FLAGS = ("foreach", "fused")


def get_spec(name: str) -> OptimizerSpec:
    """The spec called ``name``; a ValueError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(REGISTRY)}") from None


def build_optimizer(name: str, model: nn.Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                    weight_decay: float = 0.0, rules: RulesLike = None, **extra: Any) -> torch.optim.Optimizer:
    """Build registry optimizer ``name`` for ``model``'s trainable parameters.

    Args:
        name: a key of :data:`REGISTRY`.
        model: the module whose ``named_parameters()`` are optimized (names feed rules and partitions).
        lr, betas, weight_decay: shared hyperparameters (an optimizer without first moment ignores betas).
        rules: SlimAdam rules (None = the spec's default, "paper" for slimadam); an error for an optimizer
            that takes no rules.
        extra: implementation flags (``foreach``, ``fused``; refused where the spec lacks them) and
            optimizer-specific keywords (``OptimizerSpec.extras``).

    Raises:
        OptimizerUnavailable: the optimizer's package is missing or broken.
        ValueError: unknown name, unsupported flag, rules for an optimizer without rules, bad values.
    """
    spec = get_spec(name)
    # A scalar eps gets the same check everywhere: Adam-mini takes a negative eps and SM3 / GaLore a NaN.
    # Adafactor's eps pair is its factory's to check.
    eps = extra.get("eps")
    scalar_eps = eps if isinstance(eps, (int, float)) else 0.0
    try:  # one check for every optimizer: third-party ones word (or skip) these checks differently
        check_adam_hyper(lr, betas, scalar_eps, weight_decay)
        if not math.isfinite(lr):  # every optimizer here trains on lr=inf until the weights are NaN
            raise ValueError(f"Invalid learning rate: {lr}")
        if not math.isfinite(weight_decay):
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    except ValueError as e:
        raise ValueError(f"optimizer {name!r}: {e}") from None
    for flag in _IMPL_FLAGS:
        if extra.get(flag) and not getattr(spec, flag):
            raise ValueError(f"optimizer {name!r} does not support {flag}=True")
        if flag in extra and not getattr(spec, flag):
            extra.pop(flag)  # foreach=False / None on an optimizer without the flag: nothing to ask
    if extra.get("foreach") and extra.get("fused"):  # torch raises RuntimeError here, SlimAdam ValueError
        raise ValueError(f"optimizer {name!r}: `fused` and `foreach` cannot be `True` together.")
    if rules is not None and not spec.uses_rules:
        raise ValueError(f"optimizer {name!r} takes no rules (only: "
                         f"{', '.join(s.name for s in REGISTRY.values() if s.uses_rules)})")
    unknown = sorted(k for k in extra if k not in spec.extras and k not in _IMPL_FLAGS)
    if unknown:  # some third-party optimizers swallow unknown keywords silently; a typo must not
        raise ValueError(f"optimizer {name!r}: unexpected keyword(s) {', '.join(unknown)}; "
                         f"it takes: {', '.join(spec.extras) or 'no extra keywords'}")
    if weight_decay and not spec.weight_decay:  # an optimizer without weight decay must not ignore it silently
        raise ValueError(f"{name} has no weight decay; pass weight_decay=0")
    if spec.uses_rules:
        extra["rules"] = rules
    try:
        return spec.factory(model, lr, tuple(betas), weight_decay, **extra)
    except OptimizerUnavailable:
        raise
    except TypeError as e:  # an unknown keyword for this optimizer
        raise ValueError(f"optimizer {name!r}: {e}") from None
    except (ImportError, AttributeError) as e:  # a third-party package broken at construction
        if spec.package:
            raise OptimizerUnavailable(name, f"{type(e).__name__}: {e}") from None
        raise


@dataclass(frozen=True)
class Availability:
    """Whether an entry can be built here, and why not."""

    name: str
    ok: bool
    package: str | None
    version: str | None
    reason: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "package": self.package, "version": self.version,
                "reason": self.reason}


def available(names: list[str] | None = None) -> list[Availability]:
    """Status of each registry entry (imports its package; constructs nothing)."""
    out = []
    for name in names or list(REGISTRY):
        spec = get_spec(name)
        if spec.module is None:
            out.append(Availability(name, True, None, None))
            continue
        version = dist_version(spec.module)
        try:
            importlib.import_module(spec.module)
            out.append(Availability(name, True, spec.package, version))
        except Exception as e:  # missing or broken: reported, never raised
            out.append(Availability(name, False, spec.package, version, f"{type(e).__name__}: {e}"))
    return out
