"""Any model from a string: what ``--model`` accepts in ``audit``, ``profile``, ``snr`` and ``rules --apply``.

Three forms, told apart by their prefix:

* a built-in preset (``gpt2-small``, ``gpt2-small-paper``, ``llama-3-8b``...: :data:`slimbench.tasks.presets.PRESETS`);
  ``--set`` overrides a field of its config (``--set n_layer=2``);
* ``hf:<model_type>[:<head>]``: a Hugging Face transformers model built offline from
  ``AutoConfig.for_model(model_type, **overrides)``, random init, nothing downloaded. The head is chosen
  from the architecture unless given (:data:`HF_HEADS`): encoder-decoders (t5, bart) get their
  seq2seq LM, encoders with a masked-LM head (bert, roberta) ``masked-lm``, decoders (gpt2, llama)
  ``causal-lm``, image models (vit) ``image-classification``, anything else the bare ``AutoModel``;
* ``package.module:factory`` or ``path/to/file.py:factory``: any callable returning an ``nn.Module``;
  ``--set`` values become its keyword arguments.

Overrides are checked before anything is built: an unknown key, or a value whose type differs from the
setting's current one (ints are accepted for floats; a setting that is None takes anything), is a
one-line ValueError naming it. ``--set`` values are JSON where they parse (``true``, ``3``, ``0.1``,
``null``, ``[1, 2]``), else strings: :func:`parse_sets`, the one grammar of every ``--set`` (it and the
check live in :mod:`slimbench.overrides`, which tasks share; re-exported here).

Building goes through :meth:`ModelSpec.build`: on ``"meta"`` (the audit) nothing is allocated; elsewhere
the weights are initialised under ``torch.manual_seed(seed)`` in a forked RNG, so a spec and a seed fix
the model.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimbench.tasks import presets as _presets
from slimbench.overrides import check_overrides, did_you_mean, parse_sets, parse_value  # noqa: F401 - re-exported

INSTALL_HINT = "pip install 'slimbench[models]'"
# head name -> transformers Auto class; the mapping names that say a model_type has that head
HF_HEADS: dict[str, tuple[str, str | None]] = {
    "causal-lm": ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    "masked-lm": ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    "seq2seq-lm": ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
    "image-classification": ("AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
    "base": ("AutoModel", "MODEL_MAPPING_NAMES"),
}


@dataclass(frozen=True)
class ModelSpec:
    """A model named by a ``--model`` string plus its overrides; :meth:`build` makes a fresh instance.

    ``kind`` is "preset", "hf" or "factory"; ``info`` is JSON-ready provenance (what was asked for, the
    class built, the overrides); ``causal_lm`` says whether the model predicts the next token from token
    ids (what ``snr --model`` trains), None where slimbench cannot tell (a factory's model).
    """

    text: str
    kind: str
    overrides: dict[str, Any]
    info: dict[str, Any]
    causal_lm: bool | None
    max_positions: int | None
    _make: Callable[[torch.device, int], nn.Module] = field(repr=False, compare=False)
    _forward: Callable[[nn.Module, torch.Tensor], Any] | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The spec as a label: ``hf:gpt2`` or ``hf:gpt2 (n_layer=2)``."""
        if not self.overrides:
            return self.text
        return f"{self.text} ({', '.join(f'{k}={json.dumps(v)}' for k, v in self.overrides.items())})"

    def build(self, device: str | torch.device = "meta", *, seed: int = 0) -> nn.Module:
        """A fresh model on ``device`` (meta: shapes only), its init fixed by ``seed``."""
        dev = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                with dev:
                    model = self._make(dev, seed)
            except Exception as e:  # noqa: BLE001 - third-party constructors fail in many ways; say which, in one line
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise ValueError(f"building --model {self.name} failed: {type(e).__name__}: {first}") from e
        if not isinstance(model, nn.Module):
            raise ValueError(f"--model {self.text} returned {type(model).__name__}, not a torch.nn.Module")
        if dev.type == "meta" and any(p.device.type != "meta" for p in model.parameters()):
            model = model.to("meta")  # a factory that placed its weights itself: the audit still needs meta
        return model

    def lm_logits(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) of ``model`` on token ids ``idx`` (B, T); a one-line error if it gives none."""
        out = self._forward(model, idx) if self._forward is not None else model(idx)
        logits = getattr(out, "logits", None)
        if logits is None:
            logits = out[0] if isinstance(out, (tuple, list)) and out else out
        if not (isinstance(logits, torch.Tensor) and logits.dim() == 3 and tuple(logits.shape[:2]) == tuple(idx.shape)):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"--model {self.text}: forward(token ids {tuple(idx.shape)}) must give logits of shape "
                             f"(batch, time, vocab) (a tensor, a tuple starting with one, or an output with "
                             f".logits); got {got}")
        return logits

    def lm_loss(self, model: nn.Module, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of ``model`` (presets compute it themselves)."""
        if self.kind == "preset":
            return model(idx, targets)
        logits = self.lm_logits(model, idx)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def vocab_size(model: nn.Module) -> int | None:
    """The number of token ids ``model`` embeds: its input embeddings, else its first nn.Embedding."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if isinstance(emb, nn.Embedding):
        return emb.num_embeddings
    cfg = getattr(model, "config", None)
    if isinstance(getattr(cfg, "vocab_size", None), int):
        return cfg.vocab_size
    return next((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), None)


# --- the three forms ----------------------------------------------------------------------------------

def _preset(name: str, overrides: Mapping[str, Any]) -> ModelSpec:
    base = _presets.preset_config(name)
    current = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    checked = check_overrides(f"preset {name!r}", overrides, current)
    cfg = dataclasses.replace(base, **checked)
    info = {**_presets.preset_info(name, cfg), "spec": name, "kind": "preset", "overrides": dict(checked)}
    return ModelSpec(name, "preset", dict(checked), info, True, cfg.block_size,
                     lambda dev, seed: _presets.build_model(cfg, dev, seed=seed))


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ValueError(f"--model hf:... needs Hugging Face transformers: {INSTALL_HINT}") from None
    return transformers


def _hf_head(transformers: Any, model_type: str, cfg: Any) -> str:
    """The head an architecture is trained with: seq2seq LM, masked LM (encoders), causal LM, image classifier."""
    names = transformers.models.auto.modeling_auto
    if getattr(cfg, "is_encoder_decoder", False) and model_type in names.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "seq2seq-lm"
    for head in ("masked-lm", "causal-lm", "image-classification"):
        if model_type in getattr(names, HF_HEADS[head][1]):
            return head
    return "base"


def _hf(text: str, overrides: Mapping[str, Any]) -> ModelSpec:
    transformers = _import_transformers()
    body = text.removeprefix("hf:")
    model_type, _, head = body.partition(":")
    known = transformers.models.auto.configuration_auto.CONFIG_MAPPING_NAMES
    if model_type not in known:
        raise ValueError(f"unknown Hugging Face model_type {model_type!r} (transformers {transformers.__version__})"
                         f"{did_you_mean(model_type, sorted(known))}")
    default = transformers.AutoConfig.for_model(model_type)
    current = {**default.to_dict(), **{k: getattr(default, k) for k in getattr(default, "attribute_map", {})}}
    current.pop("transformers_version", None)
    checked = check_overrides(f"hf:{model_type} config", overrides, current)
    cfg = transformers.AutoConfig.for_model(model_type, **checked)
    head = head or _hf_head(transformers, model_type, cfg)
    if head not in HF_HEADS:
        raise ValueError(f"unknown head {head!r} in --model {text!r}; heads: {', '.join(HF_HEADS)}")
    auto_name, mapping = HF_HEADS[head]
    if head != "base" and model_type not in getattr(transformers.models.auto.modeling_auto, mapping):
        raise ValueError(f"hf:{model_type} has no {head} model in transformers {transformers.__version__}; "
                         f"try hf:{model_type}:base")
    auto = getattr(transformers, auto_name)
    cls_name = getattr(transformers.models.auto.modeling_auto, mapping).get(model_type, "?")
    info = {"name": f"hf:{model_type}", "spec": text, "kind": "hf", "model_type": model_type, "head": head,
            "class": cls_name if isinstance(cls_name, str) else str(cls_name), "overrides": dict(checked),
            "transformers": transformers.__version__}
    max_pos = next((getattr(cfg, k) for k in ("n_positions", "max_position_embeddings")
                    if isinstance(getattr(cfg, k, None), int)), None)
    encdec = bool(getattr(cfg, "is_encoder_decoder", False))

    def forward(model: nn.Module, idx: torch.Tensor) -> Any:
        if getattr(model, "main_input_name", "input_ids") != "input_ids":
            raise ValueError(f"--model {text}: this model takes {model.main_input_name}, not token ids; "
                             "profile and snr need a token model")
        return model(input_ids=idx, decoder_input_ids=idx) if encdec else model(input_ids=idx)

    return ModelSpec(text, "hf", dict(checked), info, head == "causal-lm", max_pos,
                     lambda dev, seed: auto.from_config(cfg), forward)


def _load_callable(text: str) -> Callable[..., Any]:
    module_name, _, attr = text.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"--model {text!r}: expected package.module:factory or path/to/file.py:factory")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"--model {text!r}: no such file {module_name}")
        spec = importlib.util.spec_from_file_location(f"_slimbench_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the user's file: say what broke, in one line
            raise ValueError(f"--model {text!r}: importing {module_name} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise ValueError(f"--model {text!r}: cannot import module {module_name!r} ({e})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model {text!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"--model {text!r}: {attr} is a {type(obj).__name__}, not a callable returning an nn.Module")
    return obj


def _factory(text: str, overrides: Mapping[str, Any]) -> ModelSpec:
    fn = _load_callable(text)
    kwargs = dict(overrides)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        params = sig.parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            current = {n: (None if p.default is p.empty else p.default) for n, p in named.items()}
            kwargs = check_overrides(f"factory {text}", kwargs, current)
        missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if missing:
            raise ValueError(f"factory {text} needs {', '.join(missing)}: give --set {missing[0]}=VALUE")
    info = {"name": text, "spec": text, "kind": "factory", "overrides": dict(kwargs)}
    return ModelSpec(text, "factory", dict(kwargs), info, None, None, lambda dev, seed: fn(**kwargs))


def resolve_model(text: str, overrides: Mapping[str, Any] | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of a ``--model`` string (see the module docstring); nothing is built yet."""
    text = text.strip()
    overrides = dict(overrides or {})
    if text.startswith("hf:"):
        return _hf(text, overrides)
    if ":" in text:
        return _factory(text, overrides)
    if text in _presets.PRESETS:
        return _preset(text, overrides)
    raise ValueError(f"unknown model preset {text!r} (presets: {', '.join(_presets.PRESETS)}); or give "
                     "hf:<model_type> (e.g. hf:gpt2) or package.module:factory")


# --- a model on an LM task's data (what `snr --model` trains) ----------------------------------------

LM_TASKS = ("gpt", "linear-lm")  # next-token tasks on offline text whose recipe does not depend on their own model


class ModelLMTask:
    """An LM task's recipe and data (batches, steps, schedule) training another model; duck-typed like
    :class:`slimbench.tasks.specs.Task` for :func:`slimbench.snr.run.run_snr`."""

    def __init__(self, inner: Any, mspec: ModelSpec) -> None:
        self._inner, self.mspec = inner, mspec
        self.spec, self.seed, self.model = inner.spec, inner.seed, inner.model

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._inner.train_batch(step)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return self.mspec.lm_loss(model, x, y)

    def describe(self) -> dict:
        return {"name": self.spec.name, "version": self.spec.version, "preset": self.spec.preset, "seed": self.seed,
                "spec": self.spec.to_dict(), "spec_fingerprint": self.spec.fingerprint(),
                "dataset": self._inner._dataset,
                "model": {"spec": self.mspec.info, "class": type(self.model).__name__,
                          "n_params": sum(p.numel() for p in self.model.parameters()),
                          "n_tensors": sum(1 for _ in self.model.parameters())}}


def lm_task(mspec: ModelSpec, task: str = "gpt", preset: str = "tiny", seed: int = 0,
            **task_overrides: Any) -> ModelLMTask:
    """Task ``task``'s data and recipe with ``mspec``'s model (built on CPU with ``seed``) in place of its own.

    Only next-token models: an HF model whose head is not a causal LM (bert's masked LM would see the
    token it predicts) is a ValueError; a factory's model must be causal itself (slimbench cannot tell).
    The model's vocabulary must cover the task's and its context the task's ``block_size``. Overrides
    are task settings (steps, batch_size, block_size, ...), not model settings.
    """
    from slimbench.tasks import data as _data
    from slimbench.tasks import specs as _specs

    if task not in LM_TASKS:
        raise ValueError(f"--model trains on an LM task's data: --task must be one of {', '.join(LM_TASKS)}, "
                         f"got {task!r}")
    if mspec.causal_lm is False:
        head = mspec.info.get("head", "this")
        raise ValueError(f"{mspec.name} is a {head} model, not a next-token predictor; snr --model trains causal LMs "
                         "(audit, profile and rules --apply take any model)")
    fields = {f.name for f in dataclasses.fields(_specs.TaskSpec)} - {"name", "version", "preset", "model", "dataset"}
    unknown = sorted(set(task_overrides) - fields)
    if unknown:
        raise ValueError(f"task {task!r} has no recipe setting {unknown[0]!r} (model settings go in --set); "
                         f"recipe settings: {', '.join(sorted(fields))}")
    spec = _specs.get_spec(task, preset, **task_overrides)
    tokens = _data.load_tokens(spec.dataset, spec.tokenizer, spec.vocab_size)
    model = mspec.build("cpu", seed=seed)
    vocab = vocab_size(model)
    if vocab is None or vocab < tokens.vocab_size:
        raise ValueError(f"{mspec.name} embeds {vocab} token ids but task {task!r} has {tokens.vocab_size}; "
                         f"give it a vocabulary of at least {tokens.vocab_size}")
    if mspec.max_positions is not None and spec.block_size > mspec.max_positions:
        raise ValueError(f"task {task!r} feeds {spec.block_size} tokens but {mspec.name} has "
                         f"{mspec.max_positions} positions; lower block_size with --task-set")
    dataset = {"name": tokens.corpus, **tokens.describe()}
    return ModelLMTask(_specs.LMTask(spec, seed, model, tokens, dataset), mspec)


MODEL_HELP = ("a preset (gpt2-small, gpt2-small-paper, llama-3-8b, ...), hf:<model_type>[:<head>] (a Hugging Face "
              "model built offline from its config, e.g. hf:gpt2, hf:llama, hf:bert) or package.module:factory "
              "(any callable returning an nn.Module)")
SET_HELP = ("override a model setting: a preset's or HF config's field (n_layer=2) or a factory's keyword "
            "argument; JSON values (2, 0.1, true, null), else strings; repeatable")


def add_model_arguments(parser: Any, default: str | None, *, with_set: bool = True) -> None:
    """``--model`` and (``with_set``) ``--set`` into ``args.model_set``, as every subcommand spells them."""
    parser.add_argument("--model", default=default, metavar="MODEL",
                        help=MODEL_HELP + (f" (default {default})" if default else ""))
    if with_set:
        parser.add_argument("--set", dest="model_set", action="append", metavar="KEY=VALUE", help=SET_HELP)
