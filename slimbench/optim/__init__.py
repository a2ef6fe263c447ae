"""Optimizers implemented by slimbench: SlimAdam and AdaLayer (functional cores in _functional.py)."""
from slimbench.optim.adalayer import AdaLayer
from slimbench.optim.slimadam import SlimAdam

__all__ = ["SlimAdam", "AdaLayer"]
