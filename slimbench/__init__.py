"""slimbench: audit and benchmark optimizer-state memory in PyTorch, built around SlimAdam.

Public API::

    from slimbench import SlimAdam, AdaLayer
    opt = SlimAdam(model.named_parameters(), lr=1e-3, rules="paper")
"""
from slimbench.memory.audit import audit
from slimbench.memory.ledger import optimizer_ledger
from slimbench.memory.profile import profile
from slimbench.optim import AdaLayer, SlimAdam
from slimbench.registry import REGISTRY, build_optimizer
from slimbench.rules import Assignment, load_rules, resolve, save_rules
from slimbench.snr import apply_rules, derive_rules, load_snr, track_snr

__version__ = "0.1.0"
# `snr` itself is not re-exported: binding slimbench.snr to a function would shadow the subpackage.
__all__ = ["SlimAdam", "AdaLayer", "Assignment", "resolve", "load_rules", "save_rules", "track_snr",
           "derive_rules", "load_snr", "apply_rules", "audit", "optimizer_ledger", "profile", "REGISTRY",
           "build_optimizer", "__version__"]
