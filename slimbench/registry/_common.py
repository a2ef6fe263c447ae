"""Helpers the family modules share: lazy third-party imports, parameter lists and decay groups."""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

from torch import nn

from slimbench.registry.spec import OptimizerUnavailable

# import name -> distribution name, where they differ (for versions in messages and `available()`)
_DISTRIBUTIONS = {"adam_mini": "adam-mini", "torch_optimizer": "torch-optimizer",
                  "pytorch_optimizer": "pytorch-optimizer"}


def import_optimizer(name: str, module: str, attr: str) -> Any:
    """Import ``module.attr`` or raise OptimizerUnavailable naming what is missing."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise OptimizerUnavailable(name, f"package {module!r} not importable ({e})") from None
    except Exception as e:  # a package that raises on import is broken, not missing
        raise OptimizerUnavailable(name, f"package {module!r} broken on import ({type(e).__name__}: {e})") from None
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise OptimizerUnavailable(name, f"{module}.{attr} not found (version "
                                         f"{dist_version(module) or 'unknown'})") from None


def dist_version(module: str) -> str | None:
    """Installed version of the distribution that provides import name ``module`` (None if absent)."""
    try:
        return importlib.metadata.version(_DISTRIBUTIONS.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return None


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    """Plain parameters, for third-party optimizers that do not take (name, param) pairs."""
    return [p for _, p in trainable(model)]


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on tensors with >= 2 dims only (norm gains and biases are not decayed), as in the paper's
    code, nanoGPT and HF's Trainer; SlimAdam does the same by default (its ``decay_vectors`` flag)."""
    named = trainable(model)
    groups = [{"params": [(n, p) for n, p in named if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [(n, p) for n, p in named if p.dim() < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]] or [{"params": named}]


def is_int(value: Any) -> bool:
    """An int that is not a bool (True would pass as rank 1)."""
    return isinstance(value, int) and not isinstance(value, bool)
