"""Cases and measuring helpers shared by the benchmark suites (imported by suites/conftest.py and tests).

A step-time case is one registry optimizer on one GPT-style parameter set (:class:`slimbench.tasks.models.GPT`,
the model the ``gpt`` task trains: ``attn.q/k/v/o``, ``mlp.up/down``, tied ``tok_emb``), with gradients
drawn once per shape and copied into every fresh model. :func:`make_setup` returns the ``setup`` that
``benchmark.pedantic`` calls before every round: a fresh model and optimizer, one untimed step so lazily
created state exists (the timed step is a steady-state step, not the first one that allocates V), then
the gradients again. Timing the first step would measure allocation, and reusing one optimizer across
rounds would let an optimizer's periodic work (GaLore's SVD every 200 steps) land in some rounds only.

Ratios to ``torch.optim.AdamW(foreach=True)``: the reference is timed in the same test, one round before
each round of the case (:func:`interleaved`), and the ratio uses the *minimum* over rounds of both: on
shared CPU cores other processes only ever add time, so the minimum estimates the uncontended cost.
"""
from __future__ import annotations

import contextlib
import copy
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from slimbench.bench import extra_info
from slimbench.tasks.models import GPT, GPTConfig

# extra_info layouts: one schema, slimbench/bench/extra_info.py, that the report and `compare` read through
BENCH_EXTRA_VERSION = extra_info.EXTRA_VERSION
KIND_STEP = extra_info.KIND_STEP
KIND_TRAINING = extra_info.KIND_TRAINING
REFERENCE = "adamw"  # registry name of the reference, run with foreach=True
REFERENCE_LABEL = "torch.optim.AdamW(foreach=True)"


@dataclass(frozen=True)
class Shape:
    """A GPT-style parameter set. ``large`` cases run only with --slimbench-large."""

    name: str
    config: dict = field(default_factory=dict)  # GPTConfig fields
    large: bool = False
    rounds: int = 10
    warmup_rounds: int = 2

    def gpt_config(self) -> GPTConfig:
        return GPTConfig(**self.config)


# Standard shapes. Vocabulary 512 (a BPE-sized table rather than the 96 characters of the tiny task) so the
# embedding is a real share of the parameters, as in GPT-2 (39M of 124M).
SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape("gpt-3m", dict(vocab_size=512, block_size=64, n_layer=4, n_head=4, d_model=256)),
    # issue-2 core case: SlimAdam(paper) vs AdamW(foreach) vs AdaLayer, 12 layers' worth of d=384 weights
    Shape("gpt-11m", dict(vocab_size=512, block_size=128, n_layer=6, n_head=6, d_model=384)),
    # GPT-2 small (124M: vocab 50304, 12 x 768); opt-in, ~2 GB per optimizer in fp32
    Shape("gpt2-124m", dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, d_model=768),
          large=True, rounds=8, warmup_rounds=2),
)}
CORE_SHAPE = "gpt-11m"
# Registry optimizers that refuse weight decay (SM3 has none); every other one runs with the LM default 0.1.
NO_WEIGHT_DECAY = frozenset({"sm3"})
CORE_OPTIMIZERS = ("slimadam", "adamw", "adalayer")


@lru_cache(maxsize=4)
def base_model(shape_name: str, device: str, dtype: torch.dtype) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(model, grads by name) for a shape, built once; every round deep-copies the model."""
    shape = SHAPES[shape_name]
    torch.manual_seed(0)
    model = GPT(shape.gpt_config()).to(device=device, dtype=dtype)
    g = torch.Generator(device="cpu").manual_seed(1)
    grads = {n: (1e-3 * torch.randn(p.shape, generator=g)).to(device=device, dtype=dtype)
             for n, p in model.named_parameters()}
    return model, grads


def build(name: str, model: nn.Module, foreach: bool | None, rules: str | None = None) -> torch.optim.Optimizer:
    """Registry optimizer ``name`` with the implementation flag (quiet: Adam-mini prints on construction)."""
    from slimbench.registry import build_optimizer

    kw = {} if foreach is None else {"foreach": foreach}
    with contextlib.redirect_stdout(io.StringIO()):
        return build_optimizer(name, model, lr=1e-3, betas=(0.9, 0.95),
                               weight_decay=0.0 if name in NO_WEIGHT_DECAY else 0.1, rules=rules, **kw)


def slimbench_version() -> str | None:
    """For extra_info: pytest-benchmark's machine_info knows Python, not torch or slimbench."""
    from slimbench.env import provenance

    return provenance()["versions"].get("slimbench")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_setup(name: str, shape: str, device: torch.device, dtype: torch.dtype, foreach: bool | None,
               rules: str | None = None) -> Callable[[], tuple[tuple, dict]]:
    """``setup`` for ``benchmark.pedantic``: fresh model + optimizer, one untimed step, fresh grads."""
    base, grads = base_model(shape, str(device), dtype)

    def setup() -> tuple[tuple, dict]:
        model = copy.deepcopy(base)
        opt = build(name, model, foreach, rules)
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
        opt.step()  # lazily created state (V, step counters, projections) is allocated here, untimed
        _sync(device)
        return (opt,), {}

    return setup


def make_target(device: torch.device) -> Callable[[torch.optim.Optimizer], None]:
    """The timed call: one ``step()``, synchronised on CUDA so the kernel time is inside the round."""
    if device.type == "cuda":
        def target(opt: torch.optim.Optimizer) -> None:
            opt.step()
            torch.cuda.synchronize(device)
    else:
        def target(opt: torch.optim.Optimizer) -> None:
            opt.step()
    return target


def interleaved(setup: Callable[[], tuple[tuple, dict]], ref_setup: Callable[[], tuple[tuple, dict]],
                target: Callable, ref_times: list[float]) -> Callable[[], tuple[tuple, dict]]:
    """``setup`` that first times one reference round (appended to ``ref_times``), then prepares the case.

    pytest-benchmark never times ``setup``, so the reference runs between the case's rounds: both see the
    same machine state, and their ratio survives other processes coming and going on shared cores far
    better than a reference timed once per session. The reference's objects live exactly as long as
    pedantic keeps the case's (until the next round's setup is done): freed tensors change what the
    allocator hands out next, and an asymmetric lifetime made AdamW ~40% slower than itself.
    """
    held: list = [None]

    def both() -> tuple[tuple, dict]:
        args, kwargs = ref_setup()
        held[0] = (args, kwargs)  # the previous reference round is freed here, as pedantic frees the case's
        t0 = time.perf_counter()
        target(*args, **kwargs)
        ref_times.append(time.perf_counter() - t0)
        del args, kwargs
        return setup()

    return both


@dataclass(frozen=True)
class Timing:
    """Seconds per step over rounds."""

    label: str
    rounds: list[float]

    @property
    def min(self) -> float:
        return min(self.rounds)

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)


def memory_info(name: str, shape: str, device: torch.device, dtype: torch.dtype, foreach: bool | None,
                rules: str | None = None) -> dict:
    """State bytes (ledger), step transient (memory.profile.step_memory) and the step's peak, on a fresh case.

    ``peak_step_bytes`` = parameters + gradients + steady state + transient of ``step()``: what the
    device must hold at the step's high-water mark (activations are freed before ``step()``).
    """
    from slimbench.memory.ledger import optimizer_ledger, tensor_bytes
    from slimbench.memory.profile import step_memory
    from slimbench.registry import get_spec, transient_budget

    (opt,), _ = make_setup(name, shape, device, dtype, foreach, rules)()
    params = [p for g in opt.param_groups for p in g["params"]]
    led = optimizer_ledger(opt)
    param_bytes = tensor_bytes(params)
    grad_bytes = tensor_bytes(p.grad for p in params)
    mem = step_memory(opt)
    largest = max(p.numel() * p.element_size() for p in params)
    budget = transient_budget(get_spec(name), param_bytes, largest)
    return {"n_params": led.param_numel, "n_tensors": led.n_params, "param_bytes": param_bytes,
            "grad_bytes": grad_bytes, "state_bytes": led.state_bytes, "state_ratio": led.ratio,
            "second_moment_saved_fraction": led.second_moment_saved_fraction,
            "transient_bytes": mem.transient_bytes, "retained_bytes": mem.retained_bytes,
            "peak_step_bytes": param_bytes + grad_bytes + led.state_bytes + mem.transient_bytes,
            "transient_budget_bytes": budget, "within_transient_budget": mem.transient_bytes <= budget,
            "memory_method": mem.method}
