"""Named, versioned, seeded tasks: model + real data + batch, steps, schedule and default hyperparameters.

    from slimbench.tasks import build_task
    task = build_task("gpt", preset="tiny", seed=0, steps=200, n_layer=4)
    loss = task.loss(task.model, task.train_batch(0))

A task is fixed by (name, preset, overrides, seed). Overrides may name any :class:`TaskSpec` field, or any
field of the task's model config (they go into ``spec.model``). ``version`` changes whenever a change here
would change a task's numbers, so old results can be told apart.

Determinism: the model is built under ``torch.manual_seed(seed)`` (in a forked RNG, the caller's global
RNG is left alone); training batch ``step`` depends only on (seed, step); validation batches are one fixed
set per task, the same for every seed, so every run of a task is scored on identical data.

Schedule (:meth:`TaskSpec.lr_factor`, as in the paper and nanoGPT): (1) linear warmup from lr/warmup to lr
over ``warmup_steps``; (2) cosine decay from lr to ``min_lr_ratio * lr`` (lr/10) at the last step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimbench.io import atomic_write
from slimbench.loop import train
from slimbench.overrides import check_overrides
from slimbench.tasks import data as _data
from slimbench.tasks import models as _models


@dataclass(frozen=True)
class TaskSpec:
    """Everything that defines a task's numbers except the seed. Treat ``model`` as read-only."""

    name: str
    version: int
    preset: str
    dataset: str  # "shakespeare", "milton", "fashion-mnist", "digits", "shakespeare>milton" (finetune)
    steps: int
    batch_size: int
    warmup_steps: int
    lr: float  # default peak learning rate (sweeps override it)
    betas: tuple[float, float]
    weight_decay: float
    eval_every: int  # validation every this many steps (and at step 0 and the last step)
    eval_batches: int  # validation batches of batch_size
    grad_clip: float = 1.0  # max global grad norm
    min_lr_ratio: float = 0.1  # cosine ends at lr * min_lr_ratio
    block_size: int | None = None  # LM context length (tokens)
    tokenizer: str | None = None  # LM: "char" | "bpe"
    vocab_size: int | None = None  # LM with BPE: vocabulary size
    pretrain_steps: int | None = None  # finetune: AdamW steps on the first corpus (cached checkpoint)
    pretrain_lr: float | None = None
    model: Mapping[str, Any] = field(default_factory=dict)  # model config fields (n_layer, d_model, init...)

    def __post_init__(self):
        checks = [  # (field, ok, what it must be)
            ("steps", self.steps >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("warmup_steps", 0 <= self.warmup_steps <= self.steps, "in 0..steps"),
            ("lr", math.isfinite(self.lr) and self.lr >= 0, "a finite number >= 0"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("grad_clip", self.grad_clip > 0, "> 0"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("eval_every", self.eval_every >= 1, ">= 1"),
            ("eval_batches", self.eval_batches >= 1, ">= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"task {self.name!r}: {name} must be {rule} (got {name}={getattr(self, name)!r})")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak lr for optimizer step ``step`` (0-based): warmup, then cosine to min_lr_ratio."""
        if step < self.warmup_steps:  # (1) linear warmup: step 0 already takes a non-zero step
            return (step + 1) / self.warmup_steps
        span = max(1, self.steps - 1 - self.warmup_steps)  # (2) cosine over the remaining steps
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["betas"] = list(self.betas)
        d["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model.items()}
        return d

    def fingerprint(self) -> str:
        """Short hash of :meth:`to_dict`: equal fingerprints mean the same task numbers (given a seed)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def __hash__(self) -> int:
        return hash(self.fingerprint())


def _rng(seed: int, stream: int, index: int) -> torch.Generator:
    """A generator fixed by (seed, stream, index): batches never depend on what ran before them."""
    state = np.random.SeedSequence([seed, stream, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


_TRAIN, _VAL = 0, 1  # RNG streams


class Task:
    """A task instance: ``spec``, ``seed``, ``model`` and the data. Subclasses say what a batch is."""

    def __init__(self, spec: TaskSpec, seed: int, model: nn.Module, dataset: dict):
        self.spec, self.seed, self.model = spec, seed, model
        self._dataset = dataset

    def train_batch(self, step: int):
        raise NotImplementedError

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        raise NotImplementedError

    def _val_batches(self, n: int) -> list:
        raise NotImplementedError

    @torch.no_grad()
    def eval_loss(self, model: nn.Module, n_batches: int | None = None) -> float:
        """Mean loss over ``n_batches`` (default ``spec.eval_batches``) fixed validation batches, in eval mode."""
        n = self.spec.eval_batches if n_batches is None else n_batches
        if n < 1:
            raise ValueError(f"n_batches must be >= 1, got {n}")
        was_training = model.training
        model.eval()
        try:
            losses = [self.loss(model, b).item() for b in self._val_batches(n)]
        finally:
            model.train(was_training)
        return float(sum(losses) / len(losses))

    def describe(self) -> dict:
        """Provenance: what this task is, on which data (with hashes), with which model."""
        config = dataclasses.asdict(self.model.config) if hasattr(self.model, "config") else {}
        return {
            "name": self.spec.name, "version": self.spec.version, "preset": self.spec.preset, "seed": self.seed,
            "spec": self.spec.to_dict(), "spec_fingerprint": self.spec.fingerprint(),
            "dataset": self._dataset,
            "model": {"class": type(self.model).__name__, "config": config,
                      "n_params": _models.count_params(self.model),
                      "n_tensors": sum(1 for _ in self.model.parameters())},
        }


class LMTask(Task):
    """Next-token prediction on random windows of ``block_size`` tokens; loss = mean cross-entropy (nats)."""

    def __init__(self, spec: TaskSpec, seed: int, model: nn.Module, tokens: _data.TokenData, dataset: dict):
        super().__init__(spec, seed, model, dataset)
        self.tokens = tokens
        self._val_cache: list = []

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _data.lm_batch(self.tokens.train, self.spec.batch_size, self.spec.block_size,
                              _rng(self.seed, _TRAIN, step))

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        logits = model(x)  # (B, T, vocab)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def _val_batches(self, n: int) -> list:
        while len(self._val_cache) < n:  # seed 0 always: one validation set per task
            i = len(self._val_cache)
            self._val_cache.append(_data.lm_batch(self.tokens.val, self.spec.batch_size, self.spec.block_size,
                                                  _rng(0, _VAL, i)))
        return self._val_cache[:n]


class ImageTask(Task):
    """Classification; each epoch visits the training set in a fresh permutation fixed by (seed, epoch)."""

    def __init__(self, spec: TaskSpec, seed: int, model: nn.Module, images: _data.ImageData, dataset: dict):
        super().__init__(spec, seed, model, dataset)
        self.images = images
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            n = self.images.train_y.numel()
            self._perms[epoch] = torch.randperm(n, generator=_rng(self.seed, _TRAIN, epoch))
        return self._perms[epoch]

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, b = self.images.train_y.numel(), self.spec.batch_size
        pos = torch.arange(step * b, (step + 1) * b)
        idx = torch.cat([self._perm(int(e))[pos[pos // n == e] % n] for e in torch.unique(pos // n)])
        return self.images.train_x[idx], self.images.train_y[idx]

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def _val_batches(self, n: int) -> list:
        b, total = self.spec.batch_size, self.images.val_y.numel()
        return [(self.images.val_x[i * b:(i + 1) * b], self.images.val_y[i * b:(i + 1) * b])
                for i in range(n) if i * b < total]


# ---------------------------------------------------------------------------------------------------------
# Task definitions


@dataclass(frozen=True)
class TaskDef:
    name: str
    version: int
    description: str
    model_keys: Mapping[str, Any]  # settings allowed in spec.model -> default (an override must match its type)
    presets: Mapping[str, TaskSpec]
    build: Callable[[TaskSpec, int], Task]


def _config_keys(cls, derived: tuple[str, ...]) -> dict[str, Any]:
    """The settable fields of model config ``cls`` and their defaults (None where it has none)."""
    def default(f: dataclasses.Field) -> Any:
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    return {f.name: default(f) for f in dataclasses.fields(cls) if f.name not in derived}


_LM = dict(betas=(0.9, 0.95), weight_decay=0.1)  # AdamW defaults of the paper / nanoGPT for language models


def _spec(name: str, version: int, preset: str, **kw) -> TaskSpec:
    return TaskSpec(name=name, version=version, preset=preset, **kw)


def _lm_dataset(tokens: _data.TokenData) -> dict:
    return {"name": tokens.corpus, **tokens.describe()}


def _build_model(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _build_gpt(spec: TaskSpec, seed: int) -> Task:
    tokens = _data.load_tokens(spec.dataset, spec.tokenizer, spec.vocab_size)
    cfg = _models.GPTConfig(vocab_size=tokens.vocab_size, block_size=spec.block_size, **spec.model)
    return LMTask(spec, seed, _build_model(seed, lambda: _models.GPT(cfg)), tokens, _lm_dataset(tokens))


def _build_linear_lm(spec: TaskSpec, seed: int) -> Task:
    tokens = _data.load_tokens(spec.dataset, spec.tokenizer, spec.vocab_size)
    cfg = _models.LinearLMConfig(vocab_size=tokens.vocab_size, **spec.model)
    return LMTask(spec, seed, _build_model(seed, lambda: _models.LinearLM(cfg)), tokens, _lm_dataset(tokens))


def _build_image(spec: TaskSpec, seed: int) -> Task:
    images = _data.load_digits() if spec.dataset == "digits" else _data.load_fashion_mnist()
    c, h = images.train_x.shape[1], images.train_x.shape[2]
    m = dict(spec.model)
    if spec.name == "vit":
        cfg = _models.ViTConfig(image_size=h, channels=c, n_classes=images.n_classes, **m)
        make = lambda: _models.ViT(cfg)  # noqa: E731
    elif m.pop("arch", "cnn") == "cnn":
        cfg = _models.ResNetConfig(in_channels=c, n_classes=images.n_classes,
                                   **{k: tuple(v) if k in ("channels", "blocks") else v for k, v in m.items()})
        make = lambda: _models.ResNet(cfg)  # noqa: E731
    else:
        if set(m) & {"channels", "blocks"}:
            raise ValueError(f"task {spec.name!r}: channels/blocks apply to arch='cnn', not the MLP")
        cfg = _models.MLPConfig(in_features=c * h * h, n_classes=images.n_classes, **m)
        make = lambda: _models.DigitsMLP(cfg)  # noqa: E731
    return ImageTask(spec, seed, _build_model(seed, make), images, images.describe())


# Fine-tuning: pre-train once on the first corpus, cache the checkpoint, fine-tune on the second.

FINETUNE_PRETRAIN_SEED = 0  # one pre-trained checkpoint per spec, shared by every fine-tuning seed


def _pretrained_llama(spec: TaskSpec, cfg: _models.LlamaConfig, source: _data.TokenData) -> tuple[dict, dict]:
    """State dict of a Llama pre-trained on ``source`` with AdamW, cached in the data cache by spec."""
    key = {"version": spec.version, "model": dataclasses.asdict(cfg), "corpus": source.corpus,
           "text_sha256": source.text_sha256, "steps": spec.pretrain_steps, "lr": spec.pretrain_lr,
           "batch_size": spec.batch_size, "block_size": spec.block_size, "seed": FINETUNE_PRETRAIN_SEED}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = _data.cache_dir() / "checkpoints" / f"finetune-llama-{digest}.pt"
    if not path.exists():
        model = _build_model(FINETUNE_PRETRAIN_SEED, lambda: _models.Llama(cfg))
        pre = dataclasses.replace(spec, steps=spec.pretrain_steps, lr=spec.pretrain_lr,
                                  warmup_steps=min(spec.warmup_steps, spec.pretrain_steps))
        task = LMTask(pre, FINETUNE_PRETRAIN_SEED, model, source, {})
        opt = torch.optim.AdamW(model.parameters(), lr=pre.lr, betas=_LM["betas"], weight_decay=_LM["weight_decay"])
        # the loop of every run (slimbench.loop), without a run's bookkeeping
        done = train(task, opt, steps=pre.steps, lr_factor=pre.lr_factor, grad_clip=pre.grad_clip)
        if done.divergence:  # never cache a checkpoint of a run that blew up
            raise RuntimeError(f"fine-tune pre-training diverged at step {done.divergence['step']} "
                               f"({done.divergence['reason']}); no checkpoint was saved")
        losses = done.train_loss
        meta = {"key": key, "initial_loss": losses[0], "final_loss": sum(losses[-10:]) / len(losses[-10:]),
                "val_loss": task.eval_loss(model)}
        # concurrent jobs may both pre-train; neither ever reads half a file
        atomic_write(path, lambda tmp: torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["state_dict"], {**ckpt["meta"], "path": str(path), "sha256": _data.sha256_file(path)}


def _build_finetune(spec: TaskSpec, seed: int) -> Task:
    source_name, _, target_name = spec.dataset.partition(">")
    source = _data.load_tokens(source_name, spec.tokenizer, spec.vocab_size)
    target = _data.load_tokens(target_name, spec.tokenizer, spec.vocab_size)
    cfg = _models.LlamaConfig(vocab_size=target.vocab_size, block_size=spec.block_size, **spec.model)
    state, meta = _pretrained_llama(spec, cfg, source)
    model = _models.Llama(cfg)
    model.load_state_dict(state)
    dataset = {"name": spec.dataset, "pretrain": {**source.describe(), "checkpoint": meta},
               "finetune": target.describe(), "sha256": target.text_sha256}
    return LMTask(spec, seed, model, target, dataset)


_CHAR_LM = dict(dataset="shakespeare", tokenizer="char", **_LM)
_FASHION = dict(dataset="fashion-mnist", betas=(0.9, 0.999))

TASKS: dict[str, TaskDef] = {t.name: t for t in [
    TaskDef("gpt", 1, "GPT decoder (tied head, Mitchell init), character-level Shakespeare",
            _config_keys(_models.GPTConfig, ("vocab_size", "block_size")), {
                "tiny": _spec("gpt", 1, "tiny", steps=300, batch_size=16, block_size=64, warmup_steps=30, lr=3e-3,
                              eval_every=100, eval_batches=8, model={"n_layer": 2, "n_head": 2, "d_model": 64},
                              **_CHAR_LM),
                "small": _spec("gpt", 1, "small", steps=2000, batch_size=16, block_size=128, warmup_steps=100,
                               lr=1e-3, eval_every=200, eval_batches=20,
                               model={"n_layer": 4, "n_head": 4, "d_model": 128}, **_CHAR_LM),
            }, _build_gpt),
    TaskDef("linear-lm", 1, "token embedding + untied head (the paper's two-layer linear model), BPE Shakespeare",
            _config_keys(_models.LinearLMConfig, ("vocab_size",)), {
                "tiny": _spec("linear-lm", 1, "tiny", steps=300, batch_size=16, block_size=64, warmup_steps=30,
                              lr=3e-2, eval_every=100, eval_batches=8, tokenizer="bpe", vocab_size=512,
                              model={"d_model": 64}, dataset="shakespeare", **_LM),
                "small": _spec("linear-lm", 1, "small", steps=2000, batch_size=32, block_size=64,
                               warmup_steps=100, lr=1e-2, eval_every=200, eval_batches=20, tokenizer="bpe",
                               vocab_size=4096, model={"d_model": 128}, dataset="shakespeare", **_LM),
            }, _build_linear_lm),
    TaskDef("vit", 1, "ViT (7x7 patches, class token), Fashion-MNIST",
            _config_keys(_models.ViTConfig, ("image_size", "channels", "n_classes")), {
                "tiny": _spec("vit", 1, "tiny", steps=300, batch_size=64, warmup_steps=30, lr=3e-3,
                              weight_decay=0.05, eval_every=100, eval_batches=8,
                              model={"n_layer": 2, "n_head": 2, "d_model": 64}, **_FASHION),
                "small": _spec("vit", 1, "small", steps=2000, batch_size=128, warmup_steps=100, lr=1e-3,
                               weight_decay=0.05, eval_every=200, eval_batches=20,
                               model={"n_layer": 4, "n_head": 4, "d_model": 128}, **_FASHION),
            }, _build_image),
    TaskDef("cnn", 1, "small ResNet with BatchNorm, Fashion-MNIST",
            _config_keys(_models.ResNetConfig, ("in_channels", "n_classes")), {
                "tiny": _spec("cnn", 1, "tiny", steps=200, batch_size=64, warmup_steps=20, lr=1e-2,
                              weight_decay=0.01, eval_every=100, eval_batches=8,
                              model={"channels": (8, 16), "blocks": (1, 1)}, **_FASHION),
                "small": _spec("cnn", 1, "small", steps=2000, batch_size=128, warmup_steps=100, lr=3e-3,
                               weight_decay=0.01, eval_every=200, eval_batches=20,
                               model={"channels": (16, 32, 64), "blocks": (1, 1, 1)}, **_FASHION),
            }, _build_image),
    TaskDef("finetune", 1, "Llama (RMSNorm, SwiGLU, RoPE) pre-trained on Shakespeare, fine-tuned on Milton",
            _config_keys(_models.LlamaConfig, ("vocab_size", "block_size")), {
                "tiny": _spec("finetune", 1, "tiny", steps=200, batch_size=16, block_size=64, warmup_steps=20,
                              lr=1e-3, eval_every=100, eval_batches=8, pretrain_steps=400, pretrain_lr=3e-3,
                              model={"n_layer": 2, "n_head": 2, "d_model": 64, "hidden": 172},
                              **{**_CHAR_LM, "dataset": "shakespeare>milton"}),
                "small": _spec("finetune", 1, "small", steps=1000, batch_size=16, block_size=128, warmup_steps=50,
                               lr=3e-4, eval_every=200, eval_batches=20, pretrain_steps=2000, pretrain_lr=1e-3,
                               model={"n_layer": 4, "n_head": 4, "d_model": 128, "hidden": 344},
                               **{**_CHAR_LM, "dataset": "shakespeare>milton"}),
            }, _build_finetune),
    TaskDef("digits", 1, "MLP (or arch='cnn': small ResNet) on scikit-learn's 8x8 digits; the fastest task",
            {**_config_keys(_models.MLPConfig, ("in_features", "n_classes")), "arch": "mlp",
             **{k: v for k, v in _config_keys(_models.ResNetConfig, ()).items() if k in ("channels", "blocks")}}, {
                "tiny": _spec("digits", 1, "tiny", dataset="digits", steps=150, batch_size=64, warmup_steps=10,
                              lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0, eval_every=50, eval_batches=5,
                              model={"arch": "mlp"}),
                "small": _spec("digits", 1, "small", dataset="digits", steps=500, batch_size=64, warmup_steps=25,
                               lr=3e-3, betas=(0.9, 0.999), weight_decay=0.0, eval_every=100, eval_batches=5,
                               model={"arch": "cnn", "channels": (16, 32), "blocks": (1, 1)}),
            }, _build_image),
]}


def list_tasks() -> list[str]:
    """Names of the standard tasks."""
    return list(TASKS)


def get_spec(name: str, preset: str = "tiny", **overrides) -> TaskSpec:
    """The spec of task ``name`` at ``preset`` with ``overrides``, validated, without loading any data.

    An override names a TaskSpec field, or a field of the task's model config (put into ``spec.model``).
    ``steps`` below the preset's, without ``warmup_steps``, scales the warmup to the preset's fraction
    of the run (at least 1); longer runs keep the preset's warmup.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    tdef = TASKS[name]
    if preset not in tdef.presets:
        raise ValueError(f"task {name!r} has no preset {preset!r}; presets: {', '.join(tdef.presets)}")
    base = tdef.presets[preset]
    spec_fields = {f.name for f in dataclasses.fields(TaskSpec)} - {"name", "version", "preset"}
    spec_kw, model_kw = {}, dict(base.model)
    for key, value in overrides.items():
        if key in spec_fields:
            spec_kw[key] = _checked(name, key, value)
        elif key in tdef.model_keys:
            model_kw[key] = _checked_model(tdef, base, key, value)
        else:
            raise ValueError(f"task {name!r} has no setting {key!r}; task settings: {', '.join(sorted(spec_fields))}; "
                             f"model settings: {', '.join(sorted(tdef.model_keys))}")
    if "model" in spec_kw:
        model_kw.update((k, _checked_model(tdef, base, k, v)) for k, v in spec_kw.pop("model").items())
    steps = spec_kw.get("steps", base.steps)
    if steps < base.steps and "warmup_steps" not in spec_kw and base.warmup_steps:
        # A shorter run keeps the recipe's shape: the preset's warmup fraction (at least one step).
        spec_kw["warmup_steps"] = min(steps, max(1, round(base.warmup_steps * steps / base.steps)))
    return dataclasses.replace(base, model=model_kw, **spec_kw)


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TaskSpec)}


def _checked_model(tdef: TaskDef, base: TaskSpec, key: str, value: Any) -> Any:
    """A model override with the type of the setting's current value (the preset's, else the config's
    default): ``tie_head=False`` read as the string 'False' would otherwise leave the head tied."""
    if key not in tdef.model_keys:
        raise ValueError(f"task {tdef.name!r} has no model setting {key!r}; model settings: "
                         f"{', '.join(sorted(tdef.model_keys))}")
    current = {key: base.model.get(key, tdef.model_keys[key])}
    return check_overrides(f"task {tdef.name!r}", {key: value}, current)[key]


def _checked(task: str, key: str, value: Any) -> Any:
    """An override of TaskSpec field ``key`` with the type the field declares (ints accepted for floats)."""
    kinds = _FIELD_TYPES[key].replace(" ", "").split("|")
    if value is None and "None" in kinds:
        return None
    if isinstance(value, bool) and "bool" not in kinds:
        pass
    elif "int" in kinds and isinstance(value, int):
        return value
    elif "float" in kinds and isinstance(value, (int, float)):
        return float(value)
    elif "str" in kinds and isinstance(value, str):
        return value
    elif key == "betas" and isinstance(value, (list, tuple)) and all(isinstance(b, (int, float)) for b in value):
        return tuple(float(b) for b in value)
    elif key == "model" and isinstance(value, Mapping):
        return value
    raise ValueError(f"task {task!r}: {key} must be {_FIELD_TYPES[key]}, got {value!r}")


def build_task(name: str, preset: str = "tiny", seed: int = 0, **overrides) -> Task:
    """Build task ``name`` (see :func:`list_tasks`) at ``preset`` with ``overrides``; loads its real data.

    Raises ValueError for an unknown task, preset or setting, and
    :class:`slimbench.tasks.data.DataUnavailable` (naming the install command) when its data is missing.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    spec = get_spec(name, preset, **overrides)
    return TASKS[name].build(spec, seed)
