"""slimbench: audit and benchmark optimizer-state memory in PyTorch, built around SlimAdam.

Public API::

    from slimbench import SlimAdam, AdaLayer
    opt = SlimAdam(model.named_parameters(), lr=1e-3, rules="paper")
"""
from slimbench.optim import AdaLayer, SlimAdam
from slimbench.rules import Assignment, load_rules, resolve, save_rules

__version__ = "0.1.0"
__all__ = ["SlimAdam", "AdaLayer", "Assignment", "resolve", "load_rules", "save_rules", "__version__"]
