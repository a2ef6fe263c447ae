"""`python -m slimbench snr` and `python -m slimbench rules` end to end (a tiny stand-in task, fast)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from slimbench import SlimAdam
from slimbench.cli import main
from slimbench.cli import snr as snr_cli
from slimbench.snr.record import load_snr
from slimbench.snr.run import run_snr
from slimbench.snr.tracker import Schedule
from tinymodels import TinyGPT, lm_loss


@dataclass(frozen=True)
class FakeSpec:
    steps: int = 40
    lr: float = 1e-2
    betas: tuple = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 4

    def lr_factor(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps)


class FakeTask:
    """The task contract (model, spec, train_batch, loss, describe) around TinyGPT on random tokens."""

    def __init__(self, seed: int = 0, n_layer: int = 2, **spec):
        torch.manual_seed(seed)
        self.model, self.seed, self.spec = TinyGPT(), seed, FakeSpec(**spec)
        while len(self.model.blocks) < n_layer:
            self.model.blocks.append(TinyGPT().blocks[0])
        self.model.blocks = self.model.blocks[:n_layer]

    def train_batch(self, step: int) -> int:
        return step

    def loss(self, model, batch) -> torch.Tensor:
        return lm_loss(model, batch)

    def describe(self) -> dict:
        return {"name": "fake", "seed": self.seed, "dataset": "random tokens"}


@pytest.fixture
def fake_tasks(monkeypatch):
    def build(name, preset, seed, **overrides):
        if name != "fake":
            raise ValueError(f"unknown task {name!r}")
        return FakeTask(seed, **overrides)
    monkeypatch.setattr(snr_cli, "build_task", build)


def test_snr_then_rules_end_to_end(fake_tasks, tmp_path, capsys):
    snr_json, rules_json = tmp_path / "snr.json", tmp_path / "rules.json"
    assert main(["snr", "--task", "fake", "--steps", "30", "--schedule", "every:10", "--out", str(snr_json)]) == 0
    out = capsys.readouterr().out
    assert "layer type" in out and "query" in out and "K at cutoff 1" in out and "tracker overhead" in out
    rec = load_snr(snr_json)
    assert rec.steps == [10, 20, 30] and rec.run["steps_done"] == 30 and rec.run["task"]["name"] == "fake"
    assert rec.run["weight_decay"] == 0.1 and rec.optimizer["class"] == "AdamW"

    assert main(["rules", str(snr_json), "--cutoff", "1.0", "--out", str(rules_json), "--sweep-cutoffs"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.attn.q.weight" in out and "second moments saved" in out and "matrices compressed" in out
    opt = SlimAdam(TinyGPT().named_parameters(), rules=str(rules_json))
    assert opt.assignments["blocks.0.ln1.weight"].dims == ()


def test_depth_average_rules_apply_to_a_deeper_task(fake_tasks, tmp_path, capsys):
    snr_json, rules_json = tmp_path / "snr.json", tmp_path / "rules.json"
    assert main(["snr", "--task", "fake", "--steps", "12", "--schedule", "every:4", "--no-progress",
                 "--out", str(snr_json)]) == 0
    assert main(["rules", str(snr_json), "--depth-average", "--skip-steps", "4", "--out", str(rules_json),
                 "--apply-to", "fake", "--apply-set", "n_layer=3"]) == 0
    out = capsys.readouterr().out
    assert "query (2)" in out and "blocks.2.attn.q.weight" in out and "type:query" in out
    assert json.loads(rules_json.read_text())["by"] == "layer_type"


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_inputs_give_one_line_errors(fake_tasks, tmp_path, capsys):
    snr_json = tmp_path / "snr.json"
    main(["snr", "--task", "fake", "--steps", "4", "--schedule", "every:2", "--no-progress", "--out", str(snr_json)])
    capsys.readouterr()
    text = snr_json.read_text()
    (tmp_path / "trunc.json").write_text(text[: len(text) // 3])
    assert "truncated" in one_line_error(capsys, ["rules", str(tmp_path / "trunc.json")])
    (tmp_path / "new.json").write_text(text.replace('"version": 1', '"version": 9', 1))
    assert "newer" in one_line_error(capsys, ["rules", str(tmp_path / "new.json")])
    assert "no such file" in one_line_error(capsys, ["rules", str(tmp_path / "missing.json")])
    assert "no SNR measurements after step 4" in one_line_error(capsys, ["rules", str(snr_json), "--skip-steps", "4"])
    assert "recorded for a different model" in one_line_error(
        capsys, ["rules", str(snr_json), "--apply-to", "fake", "--apply-set", "n_layer=1"])
    assert "bad schedule" in one_line_error(capsys, ["snr", "--task", "fake", "--schedule", "often", "--out", "x"])
    assert "unknown task" in one_line_error(capsys, ["snr", "--task", "nope", "--out", str(tmp_path / "x.json")])


@pytest.mark.realdata
def test_real_gpt_task_runs(tmp_path, capsys):
    """The real tiny gpt task on Shakespeare, a few steps with one layer (skipped without the data)."""
    tasks = pytest.importorskip("slimbench.tasks")
    try:
        tasks.build_task("gpt", preset="tiny", steps=6, warmup_steps=1, n_layer=1)
    except tasks.DataUnavailable as e:
        pytest.skip(str(e))
    snr_json = tmp_path / "snr.json"
    assert main(["snr", "--task", "gpt", "--steps", "6", "--set", "n_layer=1", "--set", "block_size=16",
                 "--schedule", "every:3", "--no-progress", "--out", str(snr_json)]) == 0
    rec = load_snr(snr_json)
    assert rec.steps == [3, 6] and rec.run["task"]["dataset"]["name"] == "shakespeare"
    assert rec.run["task"]["spec"]["warmup_steps"] == 1  # 30 of 300 steps, scaled to the short run
    assert {p.layer_type for p in rec.tracked} >= {"query", "key", "value", "attn_out", "mlp_up", "mlp_down",
                                                   "embedding"}


@dataclass(frozen=True)
class BareSpec:
    """Only what run_snr needs: no schedule, no clipping, no betas or weight decay."""
    steps: int = 6
    lr: float = 1e-2


def test_a_task_with_a_bare_spec_trains_at_a_constant_lr_without_clipping():
    task = FakeTask()
    task.spec = BareSpec()
    steps = []
    rec = run_snr(task, schedule=Schedule.parse("every:4"), callback=lambda s, v: steps.append(s))
    assert steps == [1, 2, 3, 4, 5, 6] and rec.steps == [4, 6] and rec.optimizer["lr_at_steps"] == [1e-2, 1e-2]
    assert rec.run["grad_clip"] is None and rec.run["weight_decay"] == 0.0 and rec.run["betas"] == [0.9, 0.999]
