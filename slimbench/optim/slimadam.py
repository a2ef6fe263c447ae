r"""SlimAdam: AdamW whose second moment is shared along chosen dims of each tensor.

Kalra, Kirchenbauer, Barkeshli, Goldstein (2025), "When Can You Get Away with Low Memory Adam?",
arXiv:2503.01843. Sec. 4 (SNR analysis) chooses the dims; Sec. 5 defines SlimAdam.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from slimbench.layers import parse_dims
from slimbench.optim._functional import (
    FUSED_BACKENDS,
    AdamHyper,
    reduced_shape,
    slimadam,
)
from slimbench.rules import Assignment, RulesLike, resolve


def check_adam_hyper(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """Validate like torch.optim.Adam: each message names the argument and the bad value."""
    if isinstance(lr, Tensor):
        raise ValueError("lr as a Tensor is not supported; pass a float")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: expected 2 values, got {betas}")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def default_foreach(params: Iterable[Tensor]) -> bool:
    """foreach unless some parameter lives on a device without foreach kernels (as torch decides)."""
    return all(p.device.type in ("cpu", "cuda", "xpu", "mps") for p in params)


def _store_group_dims(group: dict, names: list[str], assignments: dict[str, Assignment]) -> None:
    """Apply a group-level ``"dims"`` override (tensors with >= 2 dims) and store ``param_dims``."""
    override = group.get("dims")  # e.g. {"params": ..., "dims": "fan_in"}
    for name, p in zip(names, group["params"]):
        if override is not None and p.dim() >= 2:
            a = assignments[name]
            assignments[name] = Assignment(name, a.shape, a.layer_type, parse_dims(override, p.shape), "group:dims")
    group["param_dims"] = [list(assignments[n].dims) for n in names]


class SlimAdam(Optimizer):
    r"""AdamW with the second moment averaged over per-parameter dims K (SlimAdam).

    .. math::
        M_t = \beta_1 M_{t-1} + (1-\beta_1) G_t \qquad
        V_t = \beta_2 V_{t-1} + (1-\beta_2)\,\mathrm{mean}_K(G_t^2)

        \theta_t = \theta_{t-1}(1-\eta\lambda) - \eta\,\frac{M_t/(1-\beta_1^t)}{\sqrt{V_t/(1-\beta_2^t)}+\epsilon}

    ``V`` is stored with the reduced shape (the K dims kept as size 1) and broadcast in the update, so a
    (fan_out, fan_in) weight compressed along fan_in keeps fan_out second moments instead of
    fan_out * fan_in. K = () is exactly AdamW; K = all dims is one V per tensor (AdaLayer).

    Args:
        params: ``model.named_parameters()`` (preferred: rules match on names), an iterable of
            parameters, or param groups (dicts). A group may carry ``"dims"`` (an alias such as
            ``"fan_in"`` or a list of ints) that overrides the rules for its tensors with >= 2 dims.
        lr: learning rate (default 1e-3).
        betas: (beta1, beta2) (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: decoupled weight decay, as in AdamW (default 0).
        rules: which dims each parameter shares V along: None (no compression), ``"paper"`` (the
            paper's per-layer-type rules), a dict ``{name | glob | "type:<layer>": dims}`` or a rules
            JSON path. See :mod:`slimbench.rules`.
        foreach: use the multi-tensor path (tensors grouped by device, dtype and K). None picks
            foreach on CPU/CUDA.
        fused: do each group's whole update in as few passes over memory as possible. On CPU, fp32, fp64,
            bf16 and fp16 tensors go through a hand-written C/OpenMP kernel (:mod:`slimbench.optim._native`,
            built with the system C compiler on first use, well under a second; no transient memory);
            everything else (GPU, unusual K) is compiled per (device, dtype) bucket with
            ``torch.compile`` (:mod:`slimbench.optim._fused`; a one-off compile of seconds to tens of
            seconds; lr schedules never recompile). Each falls back, with one warning, to the next
            (native -> compile -> foreach), never a crash. Cannot be combined with ``foreach=True``.
            Default None (off).
        fused_backend: ``"auto"`` (native kernel where it applies, else torch.compile) or
            ``"compile"`` (torch.compile only, e.g. to compare the two). Default ``"auto"``.
        maximize: maximize the objective instead of minimizing (default False).

    Non-finite gradients are not skipped, exactly as in torch.optim.AdamW. Note the wider blast radius:
    one NaN in G makes mean_K(G^2) NaN for its whole row/column/tensor of V, so it poisons every
    parameter sharing that V on the next update. Clip gradients or use a GradScaler; slimbench's runner
    stops a run at the first non-finite loss.

    The attribute ``assignments`` maps each parameter name to its :class:`slimbench.rules.Assignment`
    (dims, the rule that gave them, notes such as "fused QKV weight left uncompressed").
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, rules: RulesLike = None,
                 foreach: bool | None = None, fused: bool | None = None, fused_backend: str = "auto",
                 maximize: bool = False) -> None:
        check_adam_hyper(lr, betas, eps, weight_decay)
        if fused and foreach:
            raise ValueError("`fused` and `foreach` cannot be `True` together.")
        if fused_backend not in FUSED_BACKENDS:
            raise ValueError(f"Invalid fused_backend: {fused_backend!r} (expected one of {FUSED_BACKENDS})")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach,
                        fused=fused, fused_backend=fused_backend, maximize=maximize)
        self._rules = rules
        super().__init__(params, defaults)
        self.assignments: dict[str, Assignment] = self._assign_dims(rules)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; after construction its dims come from the same rules (unmatched rules allowed)."""
        super().add_param_group(param_group)
        if hasattr(self, "assignments"):  # not during __init__, where _assign_dims handles all groups
            group = self.param_groups[-1]
            names = group.get("param_names") or [f"group{len(self.param_groups) - 1}.param{i}"
                                                 for i in range(len(group["params"]))]
            new = resolve(zip(names, (p.shape for p in group["params"])), self._rules, strict=False)
            _store_group_dims(group, names, new)
            self.assignments.update(new)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state and hyperparameters, but keep this optimizer's own ``foreach`` / ``fused`` choice.

        The three paths share one state layout, so a checkpoint from any path continues on any other.
        Unlike torch.optim (which restores the saved flags), the implementation stays the one this
        optimizer was built with: a fused run resumed from a foreach checkpoint stays fused.
        """
        flags = [(g.get("foreach"), g.get("fused")) for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, (foreach, fused) in zip(self.param_groups, flags):
            group["foreach"], group["fused"] = foreach, fused

    def _assign_dims(self, rules: RulesLike) -> dict[str, Assignment]:
        """Resolve rules to dims per parameter; store them in each group as ``group['param_dims']``.

        ``param_dims`` is a list of lists parallel to ``group['params']``, so it travels with
        ``state_dict()`` and a reloaded optimizer keeps the dims its state was built with.
        """
        group_names: list[list[str]] = []
        for gi, group in enumerate(self.param_groups):
            names = group.get("param_names")
            if names is None:
                if rules is not None:
                    raise ValueError("rules match parameter names: pass model.named_parameters() "
                                     "(or groups with named params), not bare parameters")
                names = [f"group{gi}.param{i}" for i in range(len(group["params"]))]
            group_names.append(list(names))
        flat = [n for names in group_names for n in names]
        if len(set(flat)) != len(flat):
            raise ValueError("duplicate parameter names across param groups")
        shapes = [p.shape for group in self.param_groups for p in group["params"]]
        assignments = resolve(zip(flat, shapes), rules)
        for group, names in zip(self.param_groups, group_names):
            _store_group_dims(group, names, assignments)
        return assignments

    def _init_group(self, group: dict) -> tuple[list[Tensor], ...]:
        params, grads, exp_avgs, exp_avg_sqs, steps, dims = [], [], [], [], [], []
        for p, k in zip(group["params"], group["param_dims"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("SlimAdam does not support sparse gradients")
            k = tuple(k)
            state = self.state[p]
            if len(state) == 0:
                # Same state names as torch.optim.Adam so tools that read Adam's V read ours too.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros(reduced_shape(p.shape, k), dtype=p.dtype, device=p.device)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
            dims.append(k)
        return params, grads, exp_avgs, exp_avg_sqs, steps, dims

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:
        """One optimizer step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps, dims = self._init_group(group)
            fused = bool(group.get("fused"))
            foreach = False if fused else (group["foreach"] if group["foreach"] is not None
                                           else default_foreach(params))
            beta1, beta2 = group["betas"]
            hp = AdamHyper(group["lr"], beta1, beta2, group["eps"], group["weight_decay"], group["maximize"])
            slimadam(params, grads, exp_avgs, exp_avg_sqs, steps, dims, hp=hp, foreach=foreach, fused=fused,
                     fused_backend=group.get("fused_backend", "auto"))
        return loss
