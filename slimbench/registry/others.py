"""Other third-party optimizers (pytorch-optimizer): Lion (sign of a momentum, no V) and GaLore (Adam on
low-rank projected gradients)."""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from slimbench.layers import layer_type
from slimbench.registry._common import import_optimizer, is_int, trainable, trainable_params
from slimbench.registry.errors import err
from slimbench.registry.spec import OptimizerSpec


def _lion(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    cls = import_optimizer("lion", "pytorch_optimizer", "Lion")
    return cls(trainable_params(model), lr=lr, betas=betas, weight_decay=weight_decay, **extra)


# Layer types GaLore never projects: embeddings and the head are not low-rank updates (GaLore, Sec. 5).
_GALORE_SKIP = ("embedding", "pos_embedding", "head")


# GaLore projection types pytorch-optimizer 4.1 implements (its PROJECTION_TYPE); any other fails at step 1.
_GALORE_PROJECTIONS = ("std", "reverse_std", "right", "left", "full", "random")


def _galore(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, *,
            rank: int = 128, update_proj_gap: int = 200, scale: float = 0.25, projection_type: str = "std",
            **extra: Any):
    """GaLore (Zhao et al. 2024) with a real rank group: every 2-D weight except embeddings and the head
    is projected to ``rank`` (Adam moments then live at (m, rank) or (rank, n)); the rest is plain AdamW.

    ``rank`` (default 128), ``update_proj_gap`` (steps between SVDs),
    ``scale`` and ``projection_type`` are keywords of :func:`build_optimizer`, e.g.
    ``build_optimizer("galore", model, lr=1e-3, rank=32)``. The CLI passes no optimizer keywords (``run
    --set`` sets task settings), so another rank is a Python-API choice. A weight whose smaller side is
    <= rank is not compressed at all (the projector keeps min(m, n) vectors): use a rank below the model
    width on small models.

    pytorch-optimizer accepts any rank, gap and scale (rank 0 gives (m, 0) moments and silently frozen
    weights, gap 0 divides by zero at step 2, a negative scale turns descent into ascent), so they are
    checked here.
    """
    cls = import_optimizer("galore", "pytorch_optimizer", "GaLore")
    if not is_int(rank) or rank <= 0:
        raise ValueError(f"galore: rank must be a positive int, got {rank!r}")
    if not is_int(update_proj_gap) or update_proj_gap <= 0:
        raise ValueError(f"galore: update_proj_gap must be a positive int, got {update_proj_gap!r}")
    if not (isinstance(scale, (int, float)) and 0 < scale < math.inf):
        raise ValueError(f"galore: scale must be a finite number > 0, got {scale!r}")
    if projection_type not in _GALORE_PROJECTIONS:
        raise ValueError(f"galore: unknown projection_type {projection_type!r}; "
                         f"known: {', '.join(_GALORE_PROJECTIONS)}")
    low, full = [], []
    for n, p in trainable(model):
        (low if p.dim() == 2 and layer_type(n, p.shape) not in _GALORE_SKIP else full).append(p)
    groups: list[dict[str, Any]] = []
    if low:
        groups.append({"params": low, "rank": rank, "update_proj_gap": update_proj_gap, "scale": scale,
                       "projection_type": projection_type})
    if full:
        groups.append({"params": full})
    return cls(groups, lr=lr, betas=betas, weight_decay=weight_decay, **extra)


_GALORE_ERRORS = (
    err({"rank": 0}, "galore: rank must be a positive int, got 0", "zero-rank"),
    err({"rank": -8}, "galore: rank must be a positive int, got -8", "negative-rank"),
    err({"rank": 2.5}, r"galore: rank must be a positive int, got 2\.5", "fractional-rank"),
    err({"update_proj_gap": 0}, "galore: update_proj_gap must be a positive int, got 0", "zero-gap"),
    err({"scale": -1.0}, r"galore: scale must be a finite number > 0, got -1\.0", "negative-scale"),
    err({"projection_type": "diagonal"}, "galore: unknown projection_type 'diagonal'; known: std",
        "unknown-projection"))

SPECS: tuple[OptimizerSpec, ...] = (
    # Lion's only hyperparameters are the shared ones: its error inputs are all generated.
    OptimizerSpec("lion", _lion, "Lion (Chen et al. 2023), pytorch-optimizer", "sign", foreach=True,
                  sharded=True,  # tests/test_distributed.py::test_registry_optimizers_under_fsdp2: == one process at 2, 3 ranks
                  package="pytorch-optimizer", module="pytorch_optimizer", state_class="pytorch_optimizer.Lion",
                  second_moment_keys=(), state_rule="exp_avg (param shape)",
                  sensible_lr=1e-3, transient_budget=(1.0, 3.0), extras=("weight_decouple", "maximize")),
    OptimizerSpec("galore", _galore, "GaLore (Zhao et al. 2024): Adam on rank-r (default 128) projected gradients of "
                  "2-D weights, pytorch-optimizer", "low-rank", foreach=True, needs_names=True,
                  package="pytorch-optimizer", module="pytorch_optimizer", state_class="pytorch_optimizer.GaLore",
                  second_moment_keys=("exp_avg_sq",),  # of the projected (rank-r) gradient
                  state_rule="projector (rank x n or m x rank) + Adam moments at projected shape",
                  transient_budget=(1.0, 6.0), extras=("rank", "update_proj_gap", "scale", "projection_type", "eps"),
                  own_error_inputs=_GALORE_ERRORS),
)
