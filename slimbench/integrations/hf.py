"""SlimAdam in Hugging Face ``transformers.Trainer``: train, checkpoint, resume.

Two ways in; both build ``SlimAdam(model, ...)`` from the model itself (so Conv1D / Linear layouts come
from its modules) with the Trainer's own hyperparameters (``learning_rate``, ``adam_beta1/2``,
``adam_epsilon``, ``weight_decay``; decay on tensors with >= 2 dims only, as the Trainer and the paper do):

    from slimbench.integrations.hf import slimadam_optimizer_cls_and_kwargs
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      optimizer_cls_and_kwargs=slimadam_optimizer_cls_and_kwargs(args, rules="paper"))

    # or build it yourself; the Trainer makes its lr scheduler from ``args`` as usual
    opt = slimadam_trainer_optimizer(model, args, rules="rules.json")
    trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None))

Checkpoints: the Trainer saves ``optimizer.state_dict()`` to ``checkpoint-N/optimizer.pt`` and loads it
back with ``torch.load(weights_only=True)`` on ``trainer.train(resume_from_checkpoint=...)``. SlimAdam's
state (reduced ``exp_avg_sq`` tensors, each group's ``param_dims`` and ``param_names``) is plain tensors,
lists and strings, so it passes; a resumed run in a fresh process ends bit-identical to an uninterrupted
one (``tests/test_integrations.py``). The first route needs a transformers whose
``optimizer_cls_and_kwargs`` accepts a factory (it calls ``factory()(model, **kwargs)``; 5.x does);
the second works with any version.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from slimbench.optim import SlimAdam


def _trainer_hyper(args: Any | None) -> dict[str, Any]:
    """The AdamW hyperparameters a ``TrainingArguments`` carries, as SlimAdam keywords."""
    if args is None:
        return {}
    return {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon,
            "weight_decay": args.weight_decay}


def slimadam_trainer_optimizer(model: nn.Module, args: Any | None = None, *, rules: Any = "paper",
                               **kwargs: Any) -> SlimAdam:
    """SlimAdam for ``model`` with ``args``' (a ``TrainingArguments``) lr, betas, eps and weight decay.

    ``kwargs`` override those or pass SlimAdam options (``fused=True``, ``decay_vectors=True``...).
    Pass the result as ``Trainer(optimizers=(opt, None))``.
    """
    return SlimAdam(model, **{**_trainer_hyper(args), "rules": rules, **kwargs})


class SlimAdamFactory:
    """What ``optimizer_cls_and_kwargs`` takes as its first item: the Trainer calls ``SlimAdamFactory()``
    and then the instance with ``(model, **kwargs)``, so SlimAdam sees the model, not bare parameter lists
    (its rules match names and read layouts from modules)."""

    def __call__(self, model: nn.Module, **kwargs: Any) -> SlimAdam:
        return SlimAdam(model, **kwargs)


def slimadam_optimizer_cls_and_kwargs(args: Any, *, rules: Any = "paper",
                                      **kwargs: Any) -> tuple[type[SlimAdamFactory], dict[str, Any]]:
    """``(SlimAdamFactory, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)``, hyperparameters from ``args``."""
    return SlimAdamFactory, {**_trainer_hyper(args), "rules": rules, **kwargs}
