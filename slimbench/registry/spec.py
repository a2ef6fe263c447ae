"""The registry's record types: :class:`OptimizerSpec` (one optimizer, its factory and capability flags)
and :class:`OptimizerUnavailable`; the error inputs are in :mod:`slimbench.registry.errors`.

Capability flags are the only way tests, suites and the ledger learn what an optimizer can do: nothing
downstream checks an optimizer by name (torch's ``OptimizerInfo`` without its skip lists).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from slimbench.registry.errors import ErrorInput, generated_error_inputs

Factory = Callable[..., torch.optim.Optimizer]


class OptimizerUnavailable(RuntimeError):
    """A registry optimizer whose package is missing or broken; callers report it and go on."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"optimizer {name!r} unavailable: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: how to build it from a model, and what it supports.

    Capability flags say what tests and suites may ask of it: ``foreach`` / ``fused`` (accepts that
    implementation flag), ``closure`` (``step(closure)`` works), ``needs_names`` (must see parameter
    names: rules, layer types, Adam-mini's partition), ``uses_rules`` (accepts SlimAdam rules),
    ``weight_decay`` (accepts ``weight_decay > 0``; SM3 has none), ``eps_pair`` (its ``eps`` is a pair,
    so the scalar-eps checks do not apply), ``sharded`` (steps parameters sharded across ranks).
    ``package`` is the distribution a third-party optimizer comes from (None for torch and slimbench).
    ``state_class`` is the optimizer class the factory builds, as ``"<root package>.<ClassName>"``, and
    ``second_moment_keys`` the glob patterns of its state keys that hold E[g^2] (Adam's V), which the
    ledger reads (:func:`slimbench.memory.ledger.second_moment_keys`). ``state_rule`` says in words what
    state it keeps, which the ledger then measures.
    ``sensible_lr`` is a learning rate at which a few steps on a tiny model reduce the loss.
    ``transient_budget`` bounds the extra bytes ``step()`` may allocate (see :func:`transient_budget`).
    ``own_error_inputs`` are the bad keywords only this optimizer rejects; :attr:`error_inputs` adds the
    shared ones and those its flags imply (:func:`slimbench.registry.errors.generated_error_inputs`).
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
    weight_decay: bool = True  # False: build_optimizer refuses weight_decay > 0 (the optimizer has none)
    eps_pair: bool = False  # eps is (eps1, eps2), checked by the factory, not the shared scalar-eps check
    sharded: bool = False  # steps sharded (FSDP2 DTensor) parameters; set per spec where a test proves it
    default_rules: str | None = None  # what rules=None means for this optimizer (recorded in run results)
    package: str | None = None  # distribution name, e.g. "adam-mini"
    module: str | None = None  # import name checked by available(), e.g. "adam_mini"
    state_class: str | None = None  # "torch.AdamW", "pytorch_optimizer.SM3": the class the ledger sees
    second_moment_keys: tuple[str, ...] = ()  # glob patterns of V's state keys; () = keeps no second moment
    state_rule: str = ""
    sensible_lr: float = 1e-2
    # transient budget: a * param_bytes + b * largest parameter's bytes + 64 KiB (see transient_budget)
    transient_budget: tuple[float, float] = (0.0, 3.0)
    extras: tuple[str, ...] = field(default=())  # optimizer-specific keyword arguments the factory takes
    own_error_inputs: tuple[ErrorInput, ...] = ()  # only this optimizer's; shared ones are generated

    @property
    def scalar_eps(self) -> bool:
        """Takes a scalar ``eps``, which build_optimizer checks the same way for every optimizer."""
        return "eps" in self.extras and not self.eps_pair

    @property
    def error_inputs(self) -> tuple[ErrorInput, ...]:
        """Every bad input this optimizer must reject: shared, implied by its flags, then its own."""
        return (*generated_error_inputs(self), *self.own_error_inputs)

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
