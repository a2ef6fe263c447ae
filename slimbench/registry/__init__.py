"""Registry of optimizers: one declarative :class:`OptimizerSpec` per optimizer, all in :data:`REGISTRY`.

A spec names a factory ``factory(model, lr, betas, weight_decay, **extra) -> Optimizer`` and declares what
the optimizer can do (capability flags), so suites and tests are generated from the registry and
filtered by capability, as torch's ``optim_db`` does; nothing downstream checks an optimizer by name.
Specs never set implementation flags (``foreach``, ``fused``): callers add them through
:func:`build_optimizer`, which refuses a flag the spec lacks.

One module per family holds its factories, specs and own error inputs side by side:

    torch_baselines  torch.optim Adam, AdamW, SGD
    slim             SlimAdam, AdaLayer, AdaLayer+ln+tl
    adammini         Adam-mini (adam-mini package)
    factored         Adafactor (torch, torch-optimizer), SM3, CAME
    others           Lion, GaLore (pytorch-optimizer)

and :mod:`~slimbench.registry.spec` (the records), :mod:`~slimbench.registry.errors` (the error inputs
shared by all or implied by flags), :mod:`~slimbench.registry.build` (the table, build_optimizer,
available).

Third-party optimizers are imported lazily inside their factories. A missing or broken package raises
:class:`OptimizerUnavailable` (a ``RuntimeError`` carrying the name and the reason), which every caller in
slimbench reports and skips, so one broken package never ends a run. :func:`available` lists the status
of every entry without constructing anything.

Every spec's :attr:`~OptimizerSpec.error_inputs` (:class:`ErrorInput`, as torch's ``ErrorOptimizerInput``)
are constructor keywords that must raise, with the exception type and a message regex, so a test generated
from the registry checks that each optimizer rejects bad values with a clear error instead of training
on them: :data:`SHARED_ERROR_INPUTS` (build_optimizer's own checks), those its flags imply, and its own.

Example::

    from slimbench.registry import build_optimizer
    opt = build_optimizer("slimadam", model, lr=3e-4, weight_decay=0.1)           # paper rules
    opt = build_optimizer("adamw", model, lr=3e-4, foreach=True)                  # implementation flag
    opt = build_optimizer("galore", model, lr=1e-3, rank=32)                      # optimizer-specific keyword
"""
from __future__ import annotations

import importlib  # noqa: F401 - tests hide a package by patching registry.importlib.import_module

from slimbench.registry.adammini import adam_mini_shape
from slimbench.registry.build import REGISTRY, Availability, available, build_optimizer, get_spec
from slimbench.registry.errors import SHARED_ERROR_INPUTS, ErrorInput, generated_error_inputs
from slimbench.registry.spec import Factory, OptimizerSpec, OptimizerUnavailable, transient_budget

__all__ = ["REGISTRY", "SHARED_ERROR_INPUTS", "Availability", "ErrorInput", "Factory", "OptimizerSpec",
           "OptimizerUnavailable", "adam_mini_shape", "available", "build_optimizer", "generated_error_inputs",
           "get_spec", "transient_budget"]
