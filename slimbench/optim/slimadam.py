r"""SlimAdam: AdamW whose second moment is shared along chosen dims of each tensor.

Kalra, Kirchenbauer, Barkeshli, Goldstein (2025), "When Can You Get Away with Low Memory Adam?",
arXiv:2503.01843. Sec. 4 (SNR analysis) chooses the dims; Sec. 5 defines SlimAdam.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from math import prod
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from slimbench import distributed
from slimbench.layouts import Block, Layout, model_layouts, name_layouts
from slimbench.optim._dispatch import slimadam
from slimbench.optim._docs import splice
from slimbench.optim._functional import FUSED_BACKENDS, AdamHyper
from slimbench.optim._reduce import reduced_shape
from slimbench.rules import DEFAULT_RULES, Assignment, RulesLike, resolve


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
    """Apply a group-level ``"dims"`` override (tensors with >= 2 dims); store ``param_dims`` and ``param_blocks``.

    Both are plain lists parallel to ``group['params']`` (``param_blocks[i]`` is None or one dict per block:
    its :class:`slimbench.layouts.Block` and its dims), so they travel with ``state_dict()``.
    """
    override = group.get("dims")  # e.g. {"params": ..., "dims": "fan_in"}
    for name, p in zip(names, group["params"]):
        if override is not None and p.dim() >= 2:
            a = assignments[name]
            assignments[name] = resolve([(name, p.shape)], {name: override},
                                        layouts={name: a.layout} if a.layout else None)[name]
            assignments[name] = Assignment(name, a.shape, a.layer_type, assignments[name].dims, "group:dims",
                                           layout=a.layout)
    group["param_dims"] = [list(assignments[n].dims) for n in names]
    group["param_blocks"] = [[{**b.block.to_dict(), "dims": list(b.dims)} for b in assignments[n].blocks] or None
                             for n in names]


def _state_shape(p: Tensor, dims: list[int], blocks: list[dict] | None) -> tuple[int, ...]:
    """The shape of ``exp_avg_sq`` for a parameter: reduced over K, or 1-D (the blocks' V's) for blocks."""
    if blocks:
        return (sum(prod(reduced_shape(Block.from_dict(b).shape, tuple(b["dims"]))) for b in blocks),)
    return reduced_shape(p.shape, tuple(dims))


def _named(params: Any) -> tuple[Any, dict[str, Layout] | None]:
    """``params`` as torch.optim takes them, plus layouts read from the modules when given a model."""
    if isinstance(params, nn.Module):  # trainable parameters only, as an optimizer for fine-tuning wants
        return [(n, p) for n, p in params.named_parameters() if p.requires_grad], model_layouts(params)
    return params, None


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
        weight_decay: decoupled weight decay, as in AdamW (default 0); by default only tensors with >= 2
            dims are decayed, as in the paper's code, nanoGPT and HF's Trainer (see ``decay_vectors``).
        rules: which dims each parameter shares V along (default ``"paper"``): ``"paper"`` (the paper's
            per-layer-type rules), None (no compression: AdamW, said with a warning), a dict
            ``{name | glob | "type:<layer>": dims}``, a rules JSON path, or a list of these layered
            (later wins: ``["paper", {"lm_head.weight": "none"}]``). See :mod:`slimbench.rules`. Bare
            parameters (no names) cannot be matched: the default then falls back to no compression,
            with a warning.
        decay_vectors: also decay 1-D tensors (norm gains, biases), as torch.optim.AdamW does (default False).
        {foreach}
        {fused}
        {fused_backend}
        {maximize}

    {sharded}

    Non-finite gradients are not skipped, exactly as in torch.optim.AdamW. Note the wider blast radius:
    one NaN in G makes mean_K(G^2) NaN for its whole row/column/tensor of V, so it poisons every
    parameter sharing that V on the next update. Clip gradients or use a GradScaler; slimbench's runner
    stops a run at the first non-finite loss.

    ``params`` may be the model itself (``SlimAdam(model, ...)``, preferred): each weight's layout then
    comes from its module (:mod:`slimbench.layouts`; HF ``Conv1D`` stores (in, out)) and fused weights
    (Q|K|V, gate|up) get one V per block. Given only names, (out, in) is assumed and names whose layout
    is ambiguous (GPT-2's ``c_attn`` / ``c_proj`` / ``c_fc``) are named in one warning.

    State: ``exp_avg`` has the parameter's shape; ``exp_avg_sq`` has the reduced shape, or for a fused
    weight with blocks is 1-D: each block's reduced V flattened, in block order (``param_blocks`` in the
    group says where each lives).

    The attribute ``assignments`` maps each parameter name to its :class:`slimbench.rules.Assignment`
    (dims or blocks, the rule that gave them, the layout, notes on fallbacks).
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, rules: RulesLike = DEFAULT_RULES,
                 foreach: bool | None = None, fused: bool | None = None, fused_backend: str = "auto",
                 maximize: bool = False, decay_vectors: bool = False) -> None:
        check_adam_hyper(lr, betas, eps, weight_decay)
        params, self._layouts = _named(params)
        if fused and foreach:
            raise ValueError("`fused` and `foreach` cannot be `True` together.")
        if fused_backend not in FUSED_BACKENDS:
            raise ValueError(f"Invalid fused_backend: {fused_backend!r} (expected one of {FUSED_BACKENDS})")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach,
                        fused=fused, fused_backend=fused_backend, maximize=maximize, decay_vectors=decay_vectors)
        self._rules = rules
        super().__init__(params, defaults)
        self.assignments: dict[str, Assignment] = self._assign_dims(rules)
        self._say_what_it_does()

    def _say_what_it_does(self) -> None:
        """Warn once where SlimAdam is not doing what a user would assume: nothing compressed, guessed layouts."""
        matrices = [a for a in self.assignments.values() if len(a.shape) >= 2]
        if matrices and not any(a.compressed for a in matrices):
            warnings.warn(f"SlimAdam compresses none of its {len(matrices)} weights (rules={self._rules!r}): "
                          "it is AdamW with extra steps", UserWarning, stacklevel=3)
        ambiguous = [a.name for a in matrices if a.layout is not None and a.layout.ambiguous and a.compressed]
        if ambiguous:
            warnings.warn(f"SlimAdam: layout of {len(ambiguous)} weights guessed from names ({ambiguous[0]}: "
                          f"{self.assignments[ambiguous[0]].layout.ambiguous}); pass the model itself, "
                          "SlimAdam(model, ...), so layouts come from its modules", UserWarning, stacklevel=3)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; after construction its dims come from the same rules (unmatched rules allowed)."""
        super().add_param_group(param_group)
        if hasattr(self, "assignments"):  # not during __init__, where _assign_dims handles all groups
            group = self.param_groups[-1]
            names = group.get("param_names") or [f"group{len(self.param_groups) - 1}.param{i}"
                                                 for i in range(len(group["params"]))]
            shapes = list(zip(names, (p.shape for p in group["params"])))
            lays = {n: self._layouts[n] for n, _ in shapes if n in self._layouts} if self._layouts else None
            new = resolve(shapes, self._rules, strict=False, layouts=lays or None)
            _store_group_dims(group, names, new)
            self.assignments.update(new)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state and hyperparameters, but keep this optimizer's own ``foreach`` / ``fused`` choice.

        The three paths share one state layout, so a checkpoint from any path continues on any other.
        Unlike torch.optim (which restores the saved flags), the implementation stays the one this
        optimizer was built with: a fused run resumed from a foreach checkpoint stays fused.
        """
        self._check_fits(state_dict)
        flags = [(g.get("foreach"), g.get("fused")) for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, (foreach, fused) in zip(self.param_groups, flags):
            group["foreach"], group["fused"] = foreach, fused

    def _check_fits(self, state_dict: dict[str, Any]) -> None:
        """Refuse a checkpoint made under other rules or for other shapes, naming the parameter.

        Loaded state drives native kernels that trust their buffers' sizes, so every state tensor's shape
        is checked against what this optimizer would create, before anything is loaded.
        """
        groups, state = state_dict.get("param_groups"), state_dict.get("state")
        if not isinstance(groups, list) or not isinstance(state, dict) or len(groups) != len(self.param_groups):
            raise ValueError("checkpoint does not fit this SlimAdam: "
                             f"{len(groups) if isinstance(groups, list) else 'no'} param groups, expected "
                             f"{len(self.param_groups)}")
        names = {id(p): n for n, a in self.assignments.items() for p in () }  # filled below
        for g_saved, group in zip(groups, self.param_groups):
            ids = g_saved.get("params", [])
            if len(ids) != len(group["params"]):
                raise ValueError(f"checkpoint does not fit this SlimAdam: a group has {len(ids)} parameters, "
                                 f"expected {len(group['params'])}")
            pnames = group.get("param_names") or [f"param{i}" for i in range(len(ids))]
            for i, (pid, p) in enumerate(zip(ids, group["params"])):
                name = pnames[i]
                mine = (list(group["param_dims"][i]), group["param_blocks"][i])
                saved_dims = g_saved.get("param_dims", [None] * len(ids))[i]
                saved_blocks = (g_saved.get("param_blocks") or [None] * len(ids))[i]
                if saved_dims is not None and (list(saved_dims), saved_blocks) != mine:
                    raise ValueError(f"checkpoint was made under other rules: {name!r} has K={list(saved_dims)}"
                                     f"{' with blocks' if saved_blocks else ''} in the checkpoint, "
                                     f"{mine[0]}{' with blocks' if mine[1] else ''} here")
                st = state.get(pid)
                if not st:
                    continue
                want = {"exp_avg": tuple(p.shape), "exp_avg_sq": _state_shape(p, *mine)}
                for key, shape in want.items():
                    t = st.get(key)
                    if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                        got = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
                        raise ValueError(f"checkpoint does not fit {name!r}: its {key} is {got}, this parameter "
                                         f"(shape {list(p.shape)}) needs {list(shape)}")
        del names

    def _assign_dims(self, rules: RulesLike) -> dict[str, Assignment]:
        """Resolve rules to dims per parameter; store them in each group as ``group['param_dims']``.

        ``param_dims`` is a list of lists parallel to ``group['params']``, so it travels with
        ``state_dict()`` and a reloaded optimizer keeps the dims its state was built with.
        """
        group_names: list[list[str]] = []
        for gi, group in enumerate(self.param_groups):
            names = group.get("param_names")
            if names is None:
                if rules is DEFAULT_RULES:
                    warnings.warn("SlimAdam got bare parameters, so the default 'paper' rules (which match "
                                  "names) cannot apply: nothing is compressed; pass the model or "
                                  "model.named_parameters()", UserWarning, stacklevel=4)
                    rules = self._rules = None
                elif rules is not None:
                    raise ValueError("rules match parameter names: pass the model or model.named_parameters() "
                                     "(or groups with named params), not bare parameters")
                names = [f"group{gi}.param{i}" for i in range(len(group["params"]))]
            group_names.append(list(names))
        flat = [n for names in group_names for n in names]
        if len(set(flat)) != len(flat):
            raise ValueError("duplicate parameter names across param groups")
        tensors = [p for group in self.param_groups for p in group["params"]]
        seen: dict[int, str] = {}
        for name, p in zip(flat, tensors):
            if id(p) in seen:
                raise ValueError(f"parameter {name!r} is the same tensor as {seen[id(p)]!r}: pass each parameter once")
            seen[id(p)] = name
            if p.is_complex():
                raise ValueError(f"parameter {name!r} is complex ({p.dtype}); SlimAdam supports real tensors "
                                 "only (use torch.view_as_real on a real parameter)")
        shapes = [p.shape for p in tensors]
        layouts = self._layouts if self._layouts is not None else name_layouts(zip(flat, shapes))
        assignments = resolve(zip(flat, shapes), rules, layouts=layouts)
        for group, names in zip(self.param_groups, group_names):
            _store_group_dims(group, names, assignments)
        return assignments

    def _init_group(self, group: dict, *, decayed: bool | None) -> tuple[list[Tensor], ...]:
        """The parallel lists the kernels take: every tensor (``decayed=None``), or only those that are
        (True) or are not (False) weight-decayed.

        A fused weight with blocks enters as one entry per block: views of the parameter, gradient and
        M, and a view of its slice of the flat V. The blocks share one step counter: the first block
        advances the real one, the others a copy of it (same value).

        A DTensor parameter (FSDP2) enters as its local shard; its state is created as DTensors placed as
        :mod:`slimbench.distributed` says, and the last list returned is the whole parameters, from which
        :func:`slimbench.distributed.cross_rank` tells which K cross ranks (None when nothing is sharded).
        """
        params, grads, exp_avgs, exp_avg_sqs, steps, dims, wholes = [], [], [], [], [], [], []
        names = group.get("param_names") or [f"param{i}" for i in range(len(group["params"]))]
        any_sharded = False
        decay_vectors = group.get("decay_vectors", False)
        blocks_of = group.get("param_blocks") or [None] * len(group["params"])
        for p, k, blocks, name in zip(group["params"], group["param_dims"], blocks_of, names):
            if p.grad is None or p.numel() == 0:  # a zero-size tensor has nothing to update
                continue
            if decayed is not None and (p.dim() >= 2 or decay_vectors) != decayed:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("SlimAdam does not support sparse gradients")
            k = tuple(k)
            sharded = distributed.is_sharded(p)
            if sharded and blocks:
                raise ValueError(f"SlimAdam: {name!r} is a fused weight with {len(blocks)} blocks and is sharded "
                                 f"({p.placements}); blocks of a sharded tensor are not supported: give it a plain "
                                 "rule (e.g. {name: 'fan_in'}) or keep it unsharded")
            state = self.state[p]
            if len(state) == 0:
                # Same state names as torch.optim.Adam so tools that read Adam's V read ours too.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = (distributed.zeros_v(p, k) if sharded else
                                       torch.zeros(_state_shape(p, list(k), blocks), dtype=p.dtype, device=p.device))
            if sharded and distributed.local(p).numel() == 0 and not distributed.crosses(p, k, name):
                state["step"] += 1  # an empty shard (FSDP2's tail ranks) has nothing to update, or to share
                continue
            if not blocks:
                wholes.append(p)
                if sharded:
                    params.append(p._local_tensor)
                    grads.append(distributed.local_grad(p))
                    exp_avgs.append(state["exp_avg"]._local_tensor)
                    exp_avg_sqs.append(state["exp_avg_sq"]._local_tensor)
                    any_sharded = True
                else:
                    params.append(p)
                    grads.append(p.grad)
                    exp_avgs.append(state["exp_avg"])
                    exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
                dims.append(k)
                continue
            flat, offset = state["exp_avg_sq"], 0
            for j, b in enumerate(blocks):
                block, bk = Block.from_dict(b), tuple(b["dims"])
                v_shape = reduced_shape(block.shape, bk)
                n = prod(v_shape)
                params.append(block.take(p))
                grads.append(block.take(p.grad.contiguous()))
                exp_avgs.append(block.take(state["exp_avg"]))
                exp_avg_sqs.append(flat[offset:offset + n].view(v_shape))
                offset += n
                steps.append(state["step"] if j == 0 else state["step"].clone())
                dims.append(bk)
                wholes.append(params[-1])
        return params, grads, exp_avgs, exp_avg_sqs, steps, dims, wholes if any_sharded else None

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:
        """One optimizer step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # 1-D tensors are not decayed unless decay_vectors: a second call for them, only when it matters
            split = group["weight_decay"] != 0 and not group.get("decay_vectors", False)
            for decayed in ((True, False) if split else (None,)):
                params, grads, exp_avgs, exp_avg_sqs, steps, dims, wholes = self._init_group(group, decayed=decayed)
                if not params:
                    continue
                cross = distributed.cross_rank(wholes, dims, group.get("param_names")) if wholes else None
                fused = bool(group.get("fused"))
                foreach = False if fused else (group["foreach"] if group["foreach"] is not None
                                               else default_foreach(params))
                beta1, beta2 = group["betas"]
                wd = 0.0 if decayed is False else group["weight_decay"]
                hp = AdamHyper(group["lr"], beta1, beta2, group["eps"], wd, group["maximize"])
                slimadam(params, grads, exp_avgs, exp_avg_sqs, steps, dims, hp=hp, foreach=foreach, fused=fused,
                         fused_backend=group.get("fused_backend", "auto"), cross_rank=cross)
        return loss


SlimAdam.__doc__ = splice(SlimAdam.__doc__)
