"""One run: what is recorded, divergence, validation of inputs, determinism, the result file."""
from __future__ import annotations

import json

import pytest
import torch

from slimbench.bench.results import RUN_FORMAT, RunConfig, RunResult, load_result, result_path, save_result
from slimbench.bench.runner import run
from slimbench.io import FormatError
from slimbench.tasks import get_spec

FAST = {"steps": 60, "eval_every": 20}


def adamw(name, model, lr, betas=(0.9, 0.999), weight_decay=0.0, rules=None):
    if name != "adamw":
        raise KeyError(f"no optimizer named {name!r}")
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


class _PoisonAfter(torch.optim.SGD):
    """SGD that writes NaN into the parameters at its third step."""

    def step(self, closure=None):
        super().step(closure)
        self.n = getattr(self, "n", 0) + 1
        if self.n == 3:
            with torch.no_grad():
                for g in self.param_groups:
                    for p in g["params"]:
                        p.fill_(float("nan"))


def test_a_run_records_every_step_and_the_environment():
    cfg = RunConfig(task="digits", optimizer="adamw", lr=1e-2, seed=0, overrides=FAST)
    r = run(cfg, optimizer_factory=adamw)
    spec = get_spec("digits", **FAST)
    assert r.status == "finished" and r.divergence is None
    assert len(r.train_loss) == len(r.grad_norm) == len(r.lr) == len(r.step_time_s) == 60
    assert [v["step"] for v in r.val] == [0, 20, 40, 60]
    assert r.lr == pytest.approx([1e-2 * spec.lr_factor(s) for s in range(60)])
    assert r.lr[-1] == pytest.approx(1e-3)  # cosine ends at lr / 10
    assert max(r.grad_norm) > 0 and all(t > 0 for t in r.step_time_s)
    assert r.memory["state_bytes"] > 2 * r.memory["param_bytes"] - 1  # AdamW: exp_avg + exp_avg_sq (+ steps)
    assert r.memory["second_moment_saved_fraction"] == 0.0
    assert r.env["seed"] == 0 and r.env["dtype"] == "float32" and r.env["threads"] == torch.get_num_threads()
    assert r.optimizer == {"name": "adamw", "class": "torch.optim.adamw.AdamW", "lr": 1e-2, "betas": [0.9, 0.999],
                           "weight_decay": 0.0, "rules": None, "rules_fingerprint": "none"}
    assert r.task["name"] == "digits" and r.task["spec"]["steps"] == 60
    s = r.summary
    assert s["final_val_loss"] < 0.5 * s["initial_val_loss"] and s["steps_done"] == 60


def test_same_seed_same_numbers_other_seed_other_numbers():
    cfg = RunConfig(task="digits", optimizer="adamw", lr=1e-2, seed=1, overrides={"steps": 30, "eval_every": 10})
    a, b = run(cfg, optimizer_factory=adamw), run(cfg, optimizer_factory=adamw)
    assert a.train_loss == b.train_loss and a.val == b.val and a.grad_norm == b.grad_norm
    other = run(RunConfig(**{**cfg.to_dict(), "seed": 2}), optimizer_factory=adamw)
    assert other.train_loss != a.train_loss


def test_divergence_by_factor_ends_the_run_early():
    r = run(RunConfig(task="digits", optimizer="adamw", lr=10.0, overrides=FAST), optimizer_factory=adamw)
    assert r.status == "diverged" and 0 < r.divergence["step"] < 60
    assert "x initial loss" in r.divergence["reason"]
    assert len(r.train_loss) == r.divergence["step"] + 1 and len(r.step_time_s) == r.divergence["step"]
    s = r.summary
    assert s["diverged_step"] == r.divergence["step"] and s["final_val_loss"] is None
    assert r.val[-1]["step"] < 60  # no final validation for a diverged run


def test_on_step_sees_every_step_and_the_one_that_diverged():
    seen = []
    r = run(RunConfig(task="digits", optimizer="adamw", lr=10.0, overrides=FAST), optimizer_factory=adamw,
            on_step=lambda config, step, loss: seen.append((config.lr, step, loss)))
    assert r.status == "diverged" and len(seen) == r.divergence["step"] + 1
    assert seen == [(10.0, s, v) for s, v in enumerate(r.train_loss)]


def test_non_finite_loss_is_divergence_and_the_file_is_strict_json(tmp_path):
    def poison(name, model, lr, **kw):
        return _PoisonAfter(model.parameters(), lr=lr)

    r = run(RunConfig(task="digits", optimizer="poison", lr=0.1, overrides=FAST), optimizer_factory=poison)
    assert r.status == "diverged" and r.divergence["step"] == 3 and r.divergence["reason"] == "loss is not finite"
    path = save_result(r, tmp_path)

    def no_nan(token):
        raise AssertionError(f"non-standard JSON token {token}")

    d = json.loads(path.read_text(), parse_constant=no_nan)
    assert d["train_loss"][-1] is None and d["divergence"]["loss"] == "nan"


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": -1e-3}, "lr must be a finite number >= 0"),
    ({"lr": float("nan")}, "lr must be a finite number >= 0"),
    ({"seed": -1}, "seed must be an int >= 0"),
    ({"divergence_factor": 1.0}, "divergence_factor must be > 1"),
])
def test_bad_run_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{"task": "digits", "optimizer": "adamw", "lr": 1e-3, **kwargs})


def test_unknown_task_and_optimizer_are_value_errors():
    with pytest.raises(ValueError, match="unknown task 'mnist'"):
        run(RunConfig(task="mnist", optimizer="adamw", lr=1e-3), optimizer_factory=adamw)
    with pytest.raises(ValueError, match="unknown optimizer 'adamx'"):
        run(RunConfig(task="digits", optimizer="adamx", lr=1e-3, overrides=FAST), optimizer_factory=adamw)


def test_run_id_is_deterministic_and_names_what_varies():
    base = RunConfig(task="gpt", optimizer="adalayer+ln+tl", lr=3e-4, seed=1)
    assert base.run_id == RunConfig(task="gpt", optimizer="adalayer+ln+tl", lr=0.0003, seed=1).run_id
    assert base.run_id.startswith("gpt_tiny_adalayer+ln+tl_lr0.0003_seed1_rules-none_")
    variants = [RunConfig(**{**base.to_dict(), **change}) for change in
                [{"lr": 1e-3}, {"seed": 2}, {"rules": "paper"}, {"overrides": {"steps": 5}}, {"preset": "small"},
                 {"divergence_factor": 5.0}]]
    assert len({v.run_id for v in variants} | {base.run_id}) == 7
    assert RunConfig(**{**base.to_dict(), "rules": "paper"}).run_id.split("_")[5] == "rules-paper"


def test_result_round_trips_and_bad_files_fail_with_one_line(tmp_path):
    r = run(RunConfig(task="digits", optimizer="adamw", lr=1e-2, overrides={"steps": 5}), optimizer_factory=adamw)
    path = save_result(r, tmp_path)
    assert path == result_path(tmp_path, r.config) and [p.name for p in tmp_path.iterdir()] == [path.name]
    back = load_result(path)
    assert isinstance(back, RunResult) and back.config == r.config and back.train_loss == r.train_loss
    assert back.to_dict() == json.loads(path.read_text())
    d = json.loads(path.read_text())
    assert d["format"] == RUN_FORMAT and d["version"] == 1 and d["run_id"] == r.config.run_id
    path.write_text(path.read_text()[:200])
    with pytest.raises(FormatError, match="not valid JSON"):
        load_result(path)
    del d["config"]
    path.write_text(json.dumps(d))
    with pytest.raises(FormatError, match="missing or bad field"):
        load_result(path)


def test_real_registry_end_to_end():
    full, slim = (run(RunConfig(task="gpt", optimizer=name, lr=3e-3, rules=rules,
                                overrides={"steps": 20, "n_layer": 1, "eval_every": 10, "eval_batches": 2}))
                  for name, rules in (("adamw", None), ("slimadam", "paper")))
    for r in (full, slim):
        assert r.status == "finished" and r.summary["final_val_loss"] < r.summary["initial_val_loss"]
    assert full.memory["second_moment_saved_fraction"] == 0.0
    assert slim.memory["second_moment_saved_fraction"] > 0.9  # paper rules on every 2-D weight
    assert slim.memory["state_bytes"] < 0.6 * full.memory["state_bytes"]
    assert slim.optimizer["rules_fingerprint"] == "paper" and "SlimAdam" in slim.optimizer["class"]
