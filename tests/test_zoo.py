"""One model zoo: the tasks' models and the audit presets are frozen against ``tests/zoo_fixture.json``.

The fixture was written by ``python tests/test_zoo.py --write`` *before* the presets were rebuilt from the
tasks' models (issue 15.5), so these tests prove that the rebuild changed nothing that results depend on:

* every task and preset of :mod:`slimbench.tasks` builds, at seed 0, parameters with the same ordered
  (name, shape, dtype) and the same bytes (sha256 per tensor); committed run results, SNR files and the CI
  regression gate key off them. Init draws follow module creation order, so a reordered module changes them.
* every audit preset has the same ordered parameter names, shapes and dtypes (on meta), and the tiny ones
  the same initial weights (``build_model(name, "cpu", seed=0)``).

The hashes hold where torch's CPU random fills give the bytes they gave when the fixture was written; the
fixture records a canary of those fills. On a machine whose fills differ (another vector ISA), the
per-tensor hashes cannot match for any code, so the tests compare float64 sums within 1e-5 instead and
``test_random_fills_match_the_fixture`` skips, saying so.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

FIXTURE = Path(__file__).with_name("zoo_fixture.json")


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def _canary() -> dict[str, str]:
    """Bytes of torch's CPU random fills used by every init here (normal_, uniform_, randn)."""
    g = torch.Generator().manual_seed(0)
    return {"normal_": _sha(torch.empty(4099).normal_(generator=g)),
            "uniform_": _sha(torch.empty(4099).uniform_(generator=g)),
            "randn": _sha(torch.randn(4099, generator=g))}


def _task_model(name: str, preset: str) -> torch.nn.Module:
    """The model a task builds at seed 0; for finetune the Llama it pre-trains from (its cached checkpoint
    would hide the init)."""
    from slimbench.tasks import build_task, data, models, specs

    if name == "finetune":
        spec = specs.get_spec(name, preset)
        target = data.load_tokens(spec.dataset.partition(">")[2], spec.tokenizer, spec.vocab_size)
        cfg = models.LlamaConfig(vocab_size=target.vocab_size, block_size=spec.block_size, **spec.model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(specs.FINETUNE_PRETRAIN_SEED)
            return models.Llama(cfg)
    return build_task(name, preset, seed=0).model


def _params(model: torch.nn.Module, hashes: bool) -> list[list]:
    rows = []
    for n, p in model.named_parameters():
        row = [n, list(p.shape), str(p.dtype).removeprefix("torch.")]
        if hashes:
            p = p.detach()
            row += [_sha(p), float(p.double().sum()), float(p.double().abs().sum())]
        rows.append(row)
    return rows


def _task_keys() -> list[tuple[str, str]]:
    from slimbench.tasks import specs

    return [(name, preset) for name, tdef in specs.TASKS.items() for preset in tdef.presets]


def _preset_names() -> list[str]:
    from slimbench.tasks.presets import PRESETS

    return list(PRESETS)


def snapshot() -> dict:
    from slimbench.tasks.presets import build_model

    return {
        "canary": _canary(),
        "tasks": {f"{n}/{p}": _params(_task_model(n, p), hashes=True) for n, p in _task_keys()},
        "presets": {n: _params(build_model(n, "meta"), hashes=False) for n in _preset_names()},
        "tiny_presets": {n: _params(build_model(n, "cpu", seed=0), hashes=True)
                         for n in _preset_names() if "tiny" in n},
    }


@pytest.fixture(scope="module")
def frozen() -> dict:
    return json.loads(FIXTURE.read_text())


def _same_values(got: list[list], want: list[list], exact: bool, what: str) -> None:
    assert [r[:3] for r in got] == [r[:3] for r in want], f"{what}: ordered (name, shape, dtype) changed"
    for g, w in zip(got, want):
        if exact:
            assert g[3] == w[3], f"{what}: {g[0]} has other bytes than when the fixture was written"
        else:
            assert g[4:] == pytest.approx(w[4:], rel=1e-5, abs=1e-6), f"{what}: {g[0]} changed"


def test_random_fills_match_the_fixture(frozen):
    if _canary() != frozen["canary"]:
        pytest.skip("torch's CPU random fills differ from the fixture's machine: parameter bytes are compared "
                    "as float64 sums (rel 1e-5), not sha256")
    assert _canary() == frozen["canary"]


def test_fixture_covers_every_task_and_preset(frozen):
    assert sorted(frozen["tasks"]) == sorted(f"{n}/{p}" for n, p in _task_keys())
    assert list(frozen["presets"]) == _preset_names()


@pytest.mark.parametrize("name,preset", _task_keys(), ids=lambda v: v)
def test_task_models_are_bit_identical(frozen, name, preset):
    from slimbench.tasks.data import fashion_mnist_missing

    if name in ("vit", "cnn") and (why := fashion_mnist_missing()):  # optional data: skip with the install hint
        pytest.skip(why)
    exact = _canary() == frozen["canary"]
    _same_values(_params(_task_model(name, preset), hashes=True), frozen["tasks"][f"{name}/{preset}"], exact,
                 f"task {name}/{preset}")


@pytest.mark.parametrize("name", _preset_names())
def test_presets_keep_names_shapes_and_counts(frozen, name):
    from slimbench.tasks.presets import build_model

    model = build_model(name, "meta")
    assert _params(model, hashes=False) == frozen["presets"][name]
    assert sum(p.numel() for p in model.parameters()) == sum(
        torch.Size(shape).numel() for _, shape, _ in frozen["presets"][name])


@pytest.mark.parametrize("name", [n for n in _preset_names() if "tiny" in n])
def test_tiny_presets_keep_their_init(frozen, name):
    from slimbench.tasks.presets import build_model

    exact = _canary() == frozen["canary"]
    _same_values(_params(build_model(name, "cpu", seed=0), hashes=True), frozen["tiny_presets"][name], exact,
                 f"preset {name}")


if __name__ == "__main__":  # regenerate only when a change is *meant* to change these numbers
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_zoo.py --write")
    FIXTURE.write_text(json.dumps(snapshot(), separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE}")
