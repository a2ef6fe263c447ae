"""SlimAdam in PyTorch Lightning: return it from ``configure_optimizers``.

    from slimbench.integrations.lightning import slimadam_optimizers

    class LitLM(L.LightningModule):
        def configure_optimizers(self):
            return slimadam_optimizers(self, lr=3e-4, weight_decay=0.1, rules="paper",
                                       scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 1000))

SlimAdam is built from the LightningModule itself (an ``nn.Module``), so rules see every parameter's name
(prefixed with the attribute holding the model, e.g. ``model.transformer.h.0...``; layer types are read
from the name's end) and layouts come from the modules. Lightning checkpoints ``optimizer.state_dict()``
inside the ``.ckpt`` and restores it on ``trainer.fit(module, ckpt_path=...)``; a run resumed in a fresh
process ends bit-identical to an uninterrupted one (``tests/test_integrations.py``, resuming at an epoch
boundary: a mid-epoch resume replays data only with a stateful dataloader, which is Lightning's matter).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from slimbench.optim import SlimAdam


def slimadam_optimizers(module: nn.Module, *, rules: Any = "paper", scheduler: Callable[[SlimAdam], Any] | None = None,
                        interval: str = "step", **kwargs: Any) -> SlimAdam | dict[str, Any]:
    """What ``configure_optimizers`` returns: SlimAdam over ``module`` (``kwargs``: lr, betas, weight_decay,
    fused...), or with ``scheduler`` (a function of the optimizer) Lightning's dict stepping it every
    ``interval`` ("step" or "epoch")."""
    opt = SlimAdam(module, rules=rules, **kwargs)
    if scheduler is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(opt), "interval": interval}}
