"""Registry of optimizers: one declarative :class:`OptimizerSpec` per optimizer, all in :data:`REGISTRY`.

A spec names a factory ``factory(model, lr, betas, weight_decay, **extra) -> Optimizer`` and declares what
the optimizer can do (capability flags), so suites and tests are generated from the registry and
filtered by capability, as torch's ``optim_db`` does. Specs never set implementation flags (``foreach``,
``fused``): callers add them through :func:`build_optimizer`, which refuses a flag the spec lacks.

Third-party optimizers are imported lazily inside their factories. A missing or broken package raises
:class:`OptimizerUnavailable` (a ``RuntimeError`` carrying the name and the reason), which every caller in
slimbench reports and skips, so one broken package never ends a run. :func:`available` lists the status
of every entry without constructing anything.

Every spec also declares its *error inputs* (:class:`ErrorInput`, as torch's ``ErrorOptimizerInput``):
constructor keywords that must raise, with the exception type and a message regex, so a test generated
from the registry checks that each optimizer rejects bad values with a clear error instead of training
on them. Shared ones (:data:`SHARED_ERROR_INPUTS`) come from :func:`build_optimizer`'s own checks.

Example::

    from slimbench.registry import build_optimizer
    opt = build_optimizer("slimadam", model, lr=3e-4, weight_decay=0.1)           # paper rules
    opt = build_optimizer("adamw", model, lr=3e-4, foreach=True)                  # implementation flag
    opt = build_optimizer("galore", model, lr=1e-3, rank=32)                      # optimizer-specific keyword
"""
from __future__ import annotations

import importlib
import importlib.metadata
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimbench.io import FormatError
from slimbench.layers import layer_type
from slimbench.optim import AdaLayer, SlimAdam
from slimbench.optim.slimadam import check_adam_hyper
from slimbench.rules import RulesLike

Factory = Callable[..., torch.optim.Optimizer]


class OptimizerUnavailable(RuntimeError):
    """A registry optimizer whose package is missing or broken; callers report it and go on."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"optimizer {name!r} unavailable: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class ErrorInput:
    """Keywords for :func:`build_optimizer` that must raise ``error_type`` with a message matching ``match``
    (a regex, as in ``pytest.raises(match=...)``); ``desc`` names the case in test ids.

    Only construction errors: slimbench validates up front, so no bad value waits for ``step()``. The
    keywords must fail on any model with a 2-D weight (rules use globs, not one model's names), so the
    registry does not depend on a test model.
    """

    kwargs: Mapping[str, Any] = field(hash=False)  # dicts are unhashable; the other fields identify the case
    error_type: type[Exception]
    match: str
    desc: str


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: how to build it from a model, and what it supports.

    Capability flags say what tests and suites may ask of it: ``foreach`` / ``fused`` (accepts that
    implementation flag), ``closure`` (``step(closure)`` works), ``needs_names`` (must see parameter
    names: rules, layer types, Adam-mini's partition), ``uses_rules`` (accepts SlimAdam rules).
    ``package`` is the distribution a third-party optimizer comes from (None for torch and slimbench).
    ``state_rule`` says in words what state it keeps, which the ledger then measures.
    ``sensible_lr`` is a learning rate at which a few steps on a tiny model reduce the loss.
    ``transient_budget`` bounds the extra bytes ``step()`` may allocate (see :func:`transient_budget`).
    ``error_inputs`` are the bad keywords it must reject (:class:`ErrorInput`): at least
    :data:`SHARED_ERROR_INPUTS`, plus its own wherever it has constraints of its own.
    """

    name: str
    factory: Factory
    description: str
    family: str  # "adam", "sgd", "slim", "factored", "sign", "low-rank", ...
    foreach: bool = False
    fused: bool = False
    closure: bool = True
    needs_names: bool = False
    uses_rules: bool = False
    default_rules: str | None = None  # what rules=None means for this optimizer (recorded in run results)
    package: str | None = None  # distribution name, e.g. "adam-mini"
    module: str | None = None  # import name checked by available(), e.g. "adam_mini"
    state_rule: str = ""
    sensible_lr: float = 1e-2
    # transient budget: a * param_bytes + b * largest parameter's bytes + 64 KiB (see transient_budget)
    transient_budget: tuple[float, float] = (0.0, 3.0)
    extras: tuple[str, ...] = field(default=())  # optimizer-specific keyword arguments the factory takes
    error_inputs: tuple[ErrorInput, ...] = ()  # empty on purpose: a spec must declare at least the shared ones

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "family": self.family,
                "foreach": self.foreach, "fused": self.fused, "closure": self.closure,
                "needs_names": self.needs_names, "uses_rules": self.uses_rules, "package": self.package,
                "state_rule": self.state_rule, "sensible_lr": self.sensible_lr,
                "transient_budget": list(self.transient_budget), "extras": list(self.extras)}


def transient_budget(spec: OptimizerSpec, param_bytes: int, largest_param_bytes: int) -> int:
    """Bytes ``step()`` may allocate beyond its steady state, as torch's ``test_peak_memory_foreach``
    bounds foreach temporaries: for-loop paths hold a few temporaries of one tensor at a time
    (``b * largest``); foreach paths hold lists over all tensors (``a * param_bytes``). 64 KiB of slack
    covers step counters, reduced tensors and allocator rounding."""
    a, b = spec.transient_budget
    return int(a * param_bytes + b * largest_param_bytes) + 64 * 1024


# ---------------------------------------------------------------------------------------------------------
# helpers shared by factories


def _import(name: str, module: str, attr: str) -> Any:
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
                                         f"{_dist_version(module) or 'unknown'})") from None


def _dist_version(module: str) -> str | None:
    dist = {"adam_mini": "adam-mini", "torch_optimizer": "torch-optimizer",
            "pytorch_optimizer": "pytorch-optimizer"}.get(module, module)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on tensors with >= 2 dims only (norm gains and biases are not decayed), as in the paper's
    code, nanoGPT and HF's Trainer; SlimAdam does the same by default (its ``decay_vectors`` flag)."""
    named = _trainable(model)
    groups = [{"params": [(n, p) for n, p in named if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [(n, p) for n, p in named if p.dim() < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]] or [{"params": named}]


def _is_int(value: Any) -> bool:
    """An int that is not a bool (True would pass as rank 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------------
# factories: (model, lr, betas, weight_decay, **extra) -> Optimizer


def _adamw(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    return torch.optim.AdamW(_decay_groups(model, weight_decay), lr=lr, betas=betas, weight_decay=weight_decay,
                             **extra)


def _adam(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    return torch.optim.Adam(_decay_groups(model, weight_decay), lr=lr, betas=betas, weight_decay=weight_decay,
                            **extra)


def _sgd(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    momentum = extra.pop("momentum", 0.9)
    # torch.optim.SGD checks momentum >= 0 and nesterov's needs, but trains on momentum >= 1 (the buffer
    # never forgets, so it grows without bound) and on dampening outside [0, 1] (scales or flips the gradient).
    if isinstance(momentum, (int, float)) and momentum >= 1.0:
        raise ValueError(f"sgd: Invalid momentum value: {momentum} (must be in [0, 1))")
    dampening = extra.get("dampening", 0.0)
    if not 0.0 <= dampening <= 1.0:
        raise ValueError(f"sgd: Invalid dampening value: {dampening} (must be in [0, 1])")
    return torch.optim.SGD(_decay_groups(model, weight_decay), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           **extra)


def _slimadam(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, *,
              rules: RulesLike = "paper", **extra: Any):
    return SlimAdam(model, lr=lr, betas=betas, weight_decay=weight_decay,
                    rules=REGISTRY["slimadam"].default_rules if rules is None else rules, **extra)


def _adalayer(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    return AdaLayer(_trainable(model), lr=lr, betas=betas, weight_decay=weight_decay, **extra)


def _adalayer_ln_tl(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    return AdaLayer(_trainable(model), lr=lr, betas=betas, weight_decay=weight_decay,
                    full_adam=("norm", "head"), **extra)


# Attribute pairs (dim, n_heads, n_kv_heads) used by common model configs, tried in order.
_CONFIG_KEYS = (("n_embd", "n_head", "n_kv_head"), ("d_model", "n_heads", "n_kv_heads"),
                ("hidden_size", "num_attention_heads", "num_key_value_heads"), ("dim", "n_heads", "n_kv_heads"),
                ("d_model", "n_head", "n_kv_head"), ("embed_dim", "num_heads", "num_kv_heads"))


def adam_mini_shape(model: nn.Module, dim: int | None = None, n_heads: int | None = None,
                    n_kv_heads: int | None = None) -> tuple[int, int, int | None, str]:
    """(dim, n_heads, n_kv_heads, source) for Adam-mini, from overrides, ``model.config`` or the weights.

    Adam-mini shares one second moment per attention head of the query/key weights, which it finds by
    viewing each as (-1, dim * dim / n_heads); a wrong dim or head count silently changes the partition,
    so the values come from the model's own config whenever it has one.
    """
    source = "override"
    cfg = getattr(model, "config", None)
    if cfg is not None and (dim is None or n_heads is None):
        for d_key, h_key, kv_key in _CONFIG_KEYS:
            if hasattr(cfg, d_key) and hasattr(cfg, h_key):
                dim = dim if dim is not None else int(getattr(cfg, d_key))
                n_heads = n_heads if n_heads is not None else int(getattr(cfg, h_key))
                kv = getattr(cfg, kv_key, None)
                n_kv_heads = n_kv_heads if n_kv_heads is not None else (int(kv) if kv else None)
                source = f"model.config.{d_key}/{h_key}"
                break
    if dim is None:  # infer from a query weight (out, in): in = model dim
        q = next((p for n, p in model.named_parameters() if layer_type(n, p.shape) == "query"), None)
        if q is not None:
            dim, source = int(q.shape[1]), "query weight shape"
        else:
            first2d = next((p for p in model.parameters() if p.dim() == 2), None)
            dim, source = (int(first2d.shape[-1]) if first2d is not None else 1), "no attention found"
    if n_heads is None:
        n_heads = next((int(getattr(m, a)) for m in model.modules()
                        for a in ("n_head", "n_heads", "num_heads") if isinstance(getattr(m, a, None), int)), 1)
    return dim, n_heads, n_kv_heads, source


# slimbench layer type -> the Adam-mini name set that gives that layer its intended partition
_ADAM_MINI_SETS = {"query": "wqk_names", "key": "wqk_names", "value": "wv_names", "attn_out": "attn_proj_names",
                   "mlp_up": "mlp_names", "mlp_gate": "mlp_names", "mlp_down": "mlp_names",
                   "embedding": "embd_names", "pos_embedding": "embd_names", "head": "output_names"}


def _adam_mini(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, *,
               dim: int | None = None, n_heads: int | None = None, n_kv_heads: int | None = None,
               map_names: bool = True, **extra: Any):
    """Adam-mini with dim / heads derived from the model.

    Adam-mini partitions by substrings of parameter names ("q_proj", "wte", "mlp", ...). With
    ``map_names`` (default) each parameter slimbench recognises (:func:`slimbench.layers.layer_type`) is
    added by its full name to the matching Adam-mini set, as Adam-mini's docs tell users to do, so a
    model named ``attn.q`` gets the per-head partition instead of one block-wide V. Fused QKV weights
    are left to Adam-mini's default (one V per tensor).
    """
    cls = _import("adam-mini", "adam_mini", "Adam_mini")
    named = _trainable(model)
    dim, n_heads, n_kv_heads, _ = adam_mini_shape(model, dim, n_heads, n_kv_heads)
    # Adam-mini trains on a negative dim, divides by zero on 0, and asserts "4 3" for a bad n_kv_heads.
    for key, value in (("dim", dim), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
        if value is not None and (not _is_int(value) or value <= 0):
            raise ValueError(f"adam-mini: {key} must be a positive int, got {value!r}")
    if n_kv_heads is not None and n_heads % n_kv_heads:
        raise ValueError(f"adam-mini: n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
    if dim * dim % n_heads:
        raise ValueError(f"adam-mini: dim {dim} * dim is not divisible by n_heads {n_heads}")
    head_numel = dim * dim // n_heads
    for n, p in named:
        if layer_type(n, p.shape) in ("query", "key") and p.numel() % head_numel:
            raise ValueError(f"adam-mini: {n} {tuple(p.shape)} does not split into heads of dim*dim/n_heads = "
                             f"{head_numel}; pass dim= / n_heads= matching the model")
    opt = cls(named, lr=lr, betas=betas, weight_decay=weight_decay, dim=dim, n_heads=n_heads,
              n_kv_heads=n_kv_heads, verbose=False, **extra)
    if map_names:
        for n, p in named:
            target = _ADAM_MINI_SETS.get(layer_type(n, p.shape))
            if target and p.dim() == 2:  # Adam-mini's per-neuron path assumes matrices: a ViT's (1, n, d)
                # position table mapped to embd_names would crash its step; it stays in the default block.
                getattr(opt, target).add(n.lower())
    return opt


def _adafactor(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    # torch.optim.Adafactor keeps no first moment; betas do not apply (beta2 follows beta2_decay).
    eps = extra.get("eps")
    if eps is not None and not (isinstance(eps, (tuple, list)) and len(eps) == 2):
        # torch would fail with "'float' object is not subscriptable"
        raise ValueError(f"adafactor: eps is a pair (eps1, eps2), eps1 None for the dtype's eps; got {eps!r}")
    return torch.optim.Adafactor(_trainable(model), lr=lr, weight_decay=weight_decay, **extra)


def _adafactor_tf(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    cls = _import("adafactor-tf", "torch_optimizer", "Adafactor")
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
    return cls([p for _, p in _trainable(model)], lr=lr, weight_decay=weight_decay, **kw)


def _sm3(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    cls = _import("sm3", "pytorch_optimizer", "SM3")
    if weight_decay:
        raise ValueError("sm3 has no weight decay; pass weight_decay=0")
    momentum = extra.pop("momentum", betas[0])
    return cls([p for _, p in _trainable(model)], lr=lr, momentum=momentum, **extra)


def _lion(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    cls = _import("lion", "pytorch_optimizer", "Lion")
    return cls([p for _, p in _trainable(model)], lr=lr, betas=betas, weight_decay=weight_decay, **extra)


def _came(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, **extra: Any):
    cls = _import("came", "pytorch_optimizer", "CAME")
    beta3 = extra.pop("beta3", 0.9999)
    # CAME divides the update's RMS by clip_threshold and clamps at 1: a value <= 0 silently turns clipping off.
    if not extra.get("clip_threshold", 1.0) > 0:
        raise ValueError(f"came: clip_threshold must be > 0, got {extra['clip_threshold']!r}")
    return cls([p for _, p in _trainable(model)], lr=lr, betas=(betas[0], betas[1], beta3),
               weight_decay=weight_decay, **extra)


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
    cls = _import("galore", "pytorch_optimizer", "GaLore")
    if not _is_int(rank) or rank <= 0:
        raise ValueError(f"galore: rank must be a positive int, got {rank!r}")
    if not _is_int(update_proj_gap) or update_proj_gap <= 0:
        raise ValueError(f"galore: update_proj_gap must be a positive int, got {update_proj_gap!r}")
    if not (isinstance(scale, (int, float)) and 0 < scale < math.inf):
        raise ValueError(f"galore: scale must be a finite number > 0, got {scale!r}")
    if projection_type not in _GALORE_PROJECTIONS:
        raise ValueError(f"galore: unknown projection_type {projection_type!r}; "
                         f"known: {', '.join(_GALORE_PROJECTIONS)}")
    low, full = [], []
    for n, p in _trainable(model):
        (low if p.dim() == 2 and layer_type(n, p.shape) not in _GALORE_SKIP else full).append(p)
    groups: list[dict[str, Any]] = []
    if low:
        groups.append({"params": low, "rank": rank, "update_proj_gap": update_proj_gap, "scale": scale,
                       "projection_type": projection_type})
    if full:
        groups.append({"params": full})
    return cls(groups, lr=lr, betas=betas, weight_decay=weight_decay, **extra)


# ---------------------------------------------------------------------------------------------------------
# error inputs: bad keywords each optimizer must reject (a test is generated over every spec x error input)


def _err(kwargs: Mapping[str, Any], match: str, desc: str, error_type: type[Exception] = ValueError) -> ErrorInput:
    return ErrorInput(kwargs, error_type, match, desc)


_SHARED = r"^optimizer '[^']+': "  # build_optimizer's shared check names the optimizer first

# What build_optimizer rejects the same way for every optimizer, before its factory runs.
SHARED_ERROR_INPUTS: tuple[ErrorInput, ...] = (
    _err({"lr": -1e-3}, _SHARED + r"Invalid learning rate: -0\.001", "negative-lr"),
    _err({"lr": float("nan")}, _SHARED + "Invalid learning rate: nan", "nan-lr"),
    _err({"lr": float("inf")}, _SHARED + "Invalid learning rate: inf", "inf-lr"),
    _err({"betas": (1.0, 0.999)}, _SHARED + r"Invalid beta parameter at index 0: 1\.0", "first-beta-is-1"),
    _err({"betas": (0.9, 1.0)}, _SHARED + r"Invalid beta parameter at index 1: 1\.0", "second-beta-is-1"),
    _err({"betas": (0.9,)}, _SHARED + r"Invalid betas: expected 2 values", "one-beta"),
    _err({"weight_decay": -0.1}, _SHARED + r"Invalid weight_decay value: -0\.1", "negative-weight-decay"),
    _err({"no_such_keyword": 1}, _SHARED + r"unexpected keyword\(s\) no_such_keyword", "unknown-keyword"),
)
# Shared by capability: a scalar eps, rules or an implementation flag the optimizer lacks, both flags at once.
_EPS_ERRORS = (_err({"eps": -1e-8}, _SHARED + "Invalid epsilon value: -1e-08", "negative-eps"),
               _err({"eps": float("nan")}, _SHARED + "Invalid epsilon value: nan", "nan-eps"))
_NO_RULES = _err({"rules": "paper"}, "takes no rules", "rules-refused")
_NO_FOREACH = _err({"foreach": True}, "does not support foreach=True", "foreach-refused")
_NO_FUSED = _err({"fused": True}, "does not support fused=True", "fused-refused")
_FUSED_AND_FOREACH = _err({"fused": True, "foreach": True}, "`fused` and `foreach` cannot be `True` together",
                          "fused-and-foreach")

_ADAM_ERRORS = (*SHARED_ERROR_INPUTS, *_EPS_ERRORS, _NO_RULES, _FUSED_AND_FOREACH)
_SGD_ERRORS = (*SHARED_ERROR_INPUTS, _NO_RULES, _FUSED_AND_FOREACH,
               _err({"momentum": -0.5}, r"Invalid momentum value: -0\.5", "negative-momentum"),
               _err({"momentum": 1.0}, r"sgd: Invalid momentum value: 1\.0 \(must be in \[0, 1\)\)", "momentum-is-1"),
               _err({"dampening": -0.5}, r"sgd: Invalid dampening value: -0\.5", "negative-dampening"),
               _err({"nesterov": True, "momentum": 0.0}, "Nesterov momentum requires a momentum and zero dampening",
                    "nesterov-without-momentum"),
               _err({"nesterov": True, "dampening": 0.5},
                    "Nesterov momentum requires a momentum and zero dampening", "nesterov-with-dampening"))
_SLIMADAM_ERRORS = (*SHARED_ERROR_INPUTS, *_EPS_ERRORS, _FUSED_AND_FOREACH,
                    _err({"rules": {"no.such.param": "fan_in"}},
                         r"rule 'no\.such\.param' matches no parameter.*closest parameter names", "rule-unknown-param"),
                    _err({"rules": {"*": [5]}}, r"rule '\*' for parameter .*: dim 5 does not exist for a tensor",
                         "rule-dim-out-of-range"),
                    _err({"rules": {"*": "sideways"}}, "unknown dims 'sideways'", "rule-unknown-dims-label"),
                    _err({"rules": {"type:nonsense": "fan_in"}}, "rule 'type:nonsense': unknown layer type",
                         "rule-unknown-layer-type"),
                    _err({"rules": 3}, "rules must be None, 'paper', a dict, a RuleSet, a path or a list of those; got int",
                         "rules-wrong-type"),
                    _err({"rules": "/nonexistent/slimbench-rules.json"}, "slimbench-rules.json: no such file",
                         "rules-file-missing", FormatError),
                    _err({"fused": True, "fused_backend": "triton"}, "Invalid fused_backend: 'triton'",
                         "fused-backend-unknown"))
_ADALAYER_ERRORS = (*SHARED_ERROR_INPUTS, *_EPS_ERRORS, _NO_RULES, _NO_FUSED)
_ADAM_MINI_ERRORS = (*SHARED_ERROR_INPUTS, *_EPS_ERRORS, _NO_RULES, _NO_FOREACH,
                     _err({"dim": 0}, "adam-mini: dim must be a positive int, got 0", "zero-dim"),
                     _err({"n_heads": 0}, "adam-mini: n_heads must be a positive int, got 0", "zero-heads"),
                     _err({"n_heads": 4, "n_kv_heads": 3}, "adam-mini: n_heads 4 is not a multiple of n_kv_heads 3",
                          "kv-heads-do-not-divide-heads"),
                     _err({"dim": 8, "n_heads": 3}, r"adam-mini: dim 8 \* dim is not divisible by n_heads 3",
                          "heads-do-not-divide-dim"))
_ADAFACTOR_ERRORS = (*SHARED_ERROR_INPUTS, _NO_RULES, _NO_FUSED,
                     _err({"eps": 1e-3}, r"adafactor: eps is a pair \(eps1, eps2\)", "scalar-eps"),
                     _err({"eps": (-1e-30, 1e-3)}, "epsilon1 should be >= 0", "negative-eps1"),
                     _err({"eps": (None, -1e-3)}, "epsilon2 should be >= 0", "negative-eps2"),
                     _err({"d": 0.5}, "Clipping threshold d should be >= 1", "d-below-1"),
                     _err({"beta2_decay": 0.8}, "beta2_decay should be <= 0", "positive-beta2-decay"))
_ADAFACTOR_TF_ERRORS = (*SHARED_ERROR_INPUTS, _NO_RULES, _NO_FOREACH,
                        _err({"eps2": (1e-30, -1e-3)}, "adafactor-tf: eps2 must be a pair of values >= 0",
                             "negative-eps2"),
                        _err({"clip_threshold": 0.0}, "adafactor-tf: clip_threshold must be > 0", "zero-clip"),
                        _err({"decay_rate": 0.8}, "adafactor-tf: decay_rate must be <= 0", "positive-decay-rate"),
                        _err({"beta1": 1.0}, r"adafactor-tf: beta1 must be None or in \[0, 1\)", "beta1-is-1"))
_SM3_ERRORS = (*SHARED_ERROR_INPUTS, *_EPS_ERRORS, _NO_RULES, _NO_FUSED,
               _err({"weight_decay": 0.1}, "sm3 has no weight decay", "weight-decay-refused"),
               _err({"momentum": -0.5}, r"momentum must be in the range \[0\.0, 1\.0\)", "negative-momentum"),
               _err({"momentum": 1.0}, r"momentum must be in the range \[0\.0, 1\.0\)", "momentum-is-1"),
               _err({"beta": 1.5}, r"beta must be in the range \[0\.0, 1\.0\]", "beta-above-1"))
_LION_ERRORS = (*SHARED_ERROR_INPUTS, _NO_RULES, _NO_FUSED)  # Lion's only hyperparameters are the shared ones
_CAME_ERRORS = (*SHARED_ERROR_INPUTS, _NO_RULES, _NO_FUSED,
                _err({"beta3": 1.5}, r"beta3 must be in the range \[0\.0, 1\.0\]", "beta3-above-1"),
                _err({"eps1": -1.0}, "eps1 must be non-negative", "negative-eps1"),
                _err({"eps2": -1.0}, "eps2 must be non-negative", "negative-eps2"),
                _err({"clip_threshold": 0.0}, "came: clip_threshold must be > 0", "zero-clip"))
_GALORE_ERRORS = (*SHARED_ERROR_INPUTS, *_EPS_ERRORS, _NO_RULES, _NO_FUSED,
                  _err({"rank": 0}, "galore: rank must be a positive int, got 0", "zero-rank"),
                  _err({"rank": -8}, "galore: rank must be a positive int, got -8", "negative-rank"),
                  _err({"rank": 2.5}, r"galore: rank must be a positive int, got 2\.5", "fractional-rank"),
                  _err({"update_proj_gap": 0}, "galore: update_proj_gap must be a positive int, got 0", "zero-gap"),
                  _err({"scale": -1.0}, r"galore: scale must be a finite number > 0, got -1\.0", "negative-scale"),
                  _err({"projection_type": "diagonal"}, "galore: unknown projection_type 'diagonal'; known: std",
                       "unknown-projection"))


REGISTRY: dict[str, OptimizerSpec] = {s.name: s for s in (
    OptimizerSpec("adamw", _adamw, "torch.optim.AdamW (decoupled weight decay)", "adam", foreach=True, fused=True,
                  state_rule="exp_avg + exp_avg_sq (param shape each) + 0-d step", sensible_lr=1e-2,
                  transient_budget=(1.0, 3.0), extras=("eps", "amsgrad", "maximize"),
                  error_inputs=_ADAM_ERRORS),
    OptimizerSpec("adam", _adam, "torch.optim.Adam (L2 weight decay)", "adam", foreach=True, fused=True,
                  state_rule="exp_avg + exp_avg_sq (param shape each) + 0-d step", sensible_lr=1e-2,
                  transient_budget=(1.0, 3.0), extras=("eps", "amsgrad", "maximize"),
                  error_inputs=_ADAM_ERRORS),
    OptimizerSpec("sgd", _sgd, "torch.optim.SGD, momentum 0.9", "sgd", foreach=True, fused=True,
                  state_rule="momentum_buffer (param shape)", sensible_lr=0.1, transient_budget=(1.0, 1.0),
                  extras=("momentum", "nesterov", "dampening", "maximize"),
                  error_inputs=_SGD_ERRORS),
    OptimizerSpec("slimadam", _slimadam, "SlimAdam: V averaged over per-layer dims K (paper rules by default)",
                  "slim", foreach=True, fused=True, needs_names=True, uses_rules=True, default_rules="paper",
                  state_rule="exp_avg (param shape) + exp_avg_sq (K dims of size 1) + 0-d step",
                  transient_budget=(1.0, 3.0), extras=("eps", "maximize", "fused_backend"),
                  error_inputs=_SLIMADAM_ERRORS),
    OptimizerSpec("adalayer", _adalayer, "AdaLayer: one V per tensor (Zhao et al. 2024)", "slim", foreach=True,
                  state_rule="exp_avg (param shape) + 0-d exp_avg_sq + 0-d step", transient_budget=(1.0, 3.0),
                  extras=("eps",),
                  error_inputs=_ADALAYER_ERRORS),
    OptimizerSpec("adalayer+ln+tl", _adalayer_ln_tl, "AdaLayer with full Adam for norms and the last layer",
                  "slim", foreach=True, needs_names=True,
                  state_rule="as adalayer; norms, biases and head keep a full exp_avg_sq",
                  transient_budget=(1.0, 3.0), extras=("eps",),
                  error_inputs=_ADALAYER_ERRORS),
    OptimizerSpec("adam-mini", _adam_mini, "Adam-mini: one V per head / neuron / token block (adam-mini pkg)",
                  "slim", needs_names=True, package="adam-mini", module="adam_mini",
                  state_rule="m (param shape) + vmean per block (+ full v for biases)", transient_budget=(0.0, 3.0),
                  extras=("dim", "n_heads", "n_kv_heads", "map_names", "eps"),
                  error_inputs=_ADAM_MINI_ERRORS),
    OptimizerSpec("adafactor", _adafactor, "torch.optim.Adafactor (factored V, no first moment)", "factored",
                  foreach=True, state_rule="row_var + col_var (>= 2-D) or variance (1-D) + step",
                  transient_budget=(1.0, 4.0), extras=("beta2_decay", "eps", "d", "maximize"),
                  error_inputs=_ADAFACTOR_ERRORS),
    OptimizerSpec("adafactor-tf", _adafactor_tf, "torch-optimizer Adafactor (Shazeer & Stern; lr given, "
                  "no relative step)", "factored", package="torch-optimizer", module="torch_optimizer",
                  state_rule="exp_avg_sq_row + exp_avg_sq_col (>= 2-D) or exp_avg_sq (1-D) + RMS",
                  transient_budget=(0.0, 6.0), extras=("beta1", "eps2", "clip_threshold", "decay_rate", "scale_parameter",
                                                    "relative_step", "warmup_init"),
                  error_inputs=_ADAFACTOR_TF_ERRORS),
    OptimizerSpec("sm3", _sm3, "SM3 (Anil et al. 2019): one accumulator per tensor dim, momentum 0.9",
                  "factored", foreach=True, package="pytorch-optimizer", module="pytorch_optimizer",
                  state_rule="momentum_buffer (param shape) + accumulator_i per dim", sensible_lr=0.1,
                  transient_budget=(1.0, 4.0), extras=("momentum", "beta", "eps"),
                  error_inputs=_SM3_ERRORS),
    OptimizerSpec("lion", _lion, "Lion (Chen et al. 2023), pytorch-optimizer", "sign", foreach=True,
                  package="pytorch-optimizer", module="pytorch_optimizer", state_rule="exp_avg (param shape)",
                  sensible_lr=1e-3, transient_budget=(1.0, 3.0), extras=("weight_decouple", "maximize"),
                  error_inputs=_LION_ERRORS),
    OptimizerSpec("came", _came, "CAME (Luo et al. 2023): factored V plus confidence, pytorch-optimizer",
                  "factored", foreach=True, package="pytorch-optimizer", module="pytorch_optimizer",
                  state_rule="exp_avg + exp_avg_sq_row/col + exp_avg_res_row/col (>= 2-D)", sensible_lr=1e-3,
                  transient_budget=(2.5, 6.0), extras=("beta3", "clip_threshold", "eps1", "eps2", "ams_bound"),
                  error_inputs=_CAME_ERRORS),
    OptimizerSpec("galore", _galore, "GaLore (Zhao et al. 2024): Adam on rank-r (default 128) projected gradients of "
                  "2-D weights, pytorch-optimizer", "low-rank", foreach=True, needs_names=True,
                  package="pytorch-optimizer", module="pytorch_optimizer",
                  state_rule="projector (rank x n or m x rank) + Adam moments at projected shape",
                  transient_budget=(1.0, 6.0), extras=("rank", "update_proj_gap", "scale", "projection_type", "eps"),
                  error_inputs=_GALORE_ERRORS),
)}

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
        version = _dist_version(spec.module)
        try:
            importlib.import_module(spec.module)
            out.append(Availability(name, True, spec.package, version))
        except Exception as e:  # missing or broken: reported, never raised
            out.append(Availability(name, False, spec.package, version, f"{type(e).__name__}: {e}"))
    return out
