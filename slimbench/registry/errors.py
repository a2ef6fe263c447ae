"""Error inputs: bad keywords an optimizer must reject at construction (torch's ``ErrorOptimizerInput``).

A test is generated over every spec x error input. Three sources, so no spec copies another's cases:

* :data:`SHARED_ERROR_INPUTS`: what :func:`build_optimizer` rejects the same way for every optimizer
  (lr, betas, weight decay, an unknown keyword), before its factory runs;
* cases its capability flags imply (:func:`generated_error_inputs`): a scalar ``eps``, rules, an
  implementation flag it lacks, both implementation flags at once, weight decay it does not have;
* its own (``OptimizerSpec.own_error_inputs``), declared beside its factory.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


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


def err(kwargs: Mapping[str, Any], match: str, desc: str, error_type: type[Exception] = ValueError) -> ErrorInput:
    """Shorthand for the error-input tables (a ValueError unless said otherwise)."""
    return ErrorInput(kwargs, error_type, match, desc)


SHARED = r"^optimizer '[^']+': "  # build_optimizer's shared check names the optimizer first

SHARED_ERROR_INPUTS: tuple[ErrorInput, ...] = (
    err({"lr": -1e-3}, SHARED + r"Invalid learning rate: -0\.001", "negative-lr"),
    err({"lr": float("nan")}, SHARED + "Invalid learning rate: nan", "nan-lr"),
    err({"lr": float("inf")}, SHARED + "Invalid learning rate: inf", "inf-lr"),
    err({"betas": (1.0, 0.999)}, SHARED + r"Invalid beta parameter at index 0: 1\.0", "first-beta-is-1"),
    err({"betas": (0.9, 1.0)}, SHARED + r"Invalid beta parameter at index 1: 1\.0", "second-beta-is-1"),
    err({"betas": (0.9,)}, SHARED + r"Invalid betas: expected 2 values", "one-beta"),
    err({"weight_decay": -0.1}, SHARED + r"Invalid weight_decay value: -0\.1", "negative-weight-decay"),
    err({"no_such_keyword": 1}, SHARED + r"unexpected keyword\(s\) no_such_keyword", "unknown-keyword"),
)

SCALAR_EPS_ERROR_INPUTS: tuple[ErrorInput, ...] = (
    err({"eps": -1e-8}, SHARED + "Invalid epsilon value: -1e-08", "negative-eps"),
    err({"eps": float("nan")}, SHARED + "Invalid epsilon value: nan", "nan-eps"))
NO_RULES = err({"rules": "paper"}, "takes no rules", "rules-refused")
NO_FOREACH = err({"foreach": True}, "does not support foreach=True", "foreach-refused")
NO_FUSED = err({"fused": True}, "does not support fused=True", "fused-refused")
FUSED_AND_FOREACH = err({"fused": True, "foreach": True}, "`fused` and `foreach` cannot be `True` together",
                        "fused-and-foreach")


class Capabilities(Protocol):
    """The spec flags the generated cases depend on (:class:`slimbench.registry.spec.OptimizerSpec`)."""

    name: str
    foreach: bool
    fused: bool
    uses_rules: bool
    weight_decay: bool

    @property
    def scalar_eps(self) -> bool: ...


def generated_error_inputs(spec: Capabilities) -> tuple[ErrorInput, ...]:
    """The shared cases, then the ones ``spec``'s flags imply, in that order."""
    out = list(SHARED_ERROR_INPUTS)
    if spec.scalar_eps:
        out += SCALAR_EPS_ERROR_INPUTS
    if not spec.uses_rules:
        out.append(NO_RULES)
    if not spec.foreach:
        out.append(NO_FOREACH)
    if not spec.fused:
        out.append(NO_FUSED)
    if spec.foreach and spec.fused:
        out.append(FUSED_AND_FOREACH)
    if not spec.weight_decay:
        out.append(err({"weight_decay": 0.1}, f"{spec.name} has no weight decay", "weight-decay-refused"))
    return tuple(out)
