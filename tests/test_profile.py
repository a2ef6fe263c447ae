"""Memory profile of a training step: the CPU tracker counts what it should, the split adds up, every
registry optimizer stays within its transient budget, and the CUDA path runs where a GPU exists."""
from __future__ import annotations

import json

import pytest
import torch

from slimbench.cli import main
from slimbench.memory.ledger import optimizer_ledger
from slimbench.tasks.presets import build_model
from slimbench.memory.profile import METHOD_CPU, METHOD_CUDA, LiveTensorTracker, profile, step_memory
from slimbench.registry import REGISTRY, build_optimizer, transient_budget

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_tracker_counts_new_storages_frees_and_ignores_views():
    base = torch.zeros(1000)
    tracker = LiveTensorTracker()
    with tracker:
        with tracker.phase("work") as ph:
            a = torch.ones(1000)  # +4000
            v = a[10:20]  # a view: not new
            base.add_(1)  # in place on an old tensor: not new
            b = a * 2  # +4000
            del b  # -4000
            del v
        assert tracker.live == 4000
    assert (ph.start, ph.peak, ph.end) == (0, 8000, 4000)
    assert ph.transient == 8000 and ph.retained == 4000
    del a
    assert tracker.live == 0 and tracker.peak == 8000


def _ready(name: str, foreach: bool | None = None, model_name: str = "gpt2-tiny"):
    torch.manual_seed(0)
    model = build_model(model_name, "cpu")
    kw = {} if foreach is None or not REGISTRY[name].foreach else {"foreach": foreach}
    opt = build_optimizer(name, model, lr=REGISTRY[name].sensible_lr, **kw)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 256, (2, 17), generator=g)
    for _ in range(2):  # warm-up: state exists
        opt.zero_grad(set_to_none=True)
        model(idx[:, :-1], idx[:, 1:]).backward()
        opt.step()
    return model, opt


_CASES = [(s.name, fe) for s in REGISTRY.values() for fe in ((False, True) if s.foreach else (None,))]


@pytest.mark.parametrize("name,foreach", _CASES, ids=[f"{n}-foreach={f}" for n, f in _CASES])
def test_step_transient_within_budget(name, foreach):
    model, opt = _ready(name, foreach)
    sm = step_memory(opt)
    params = list(model.parameters())
    budget = transient_budget(REGISTRY[name], sum(p.numel() * 4 for p in params), max(p.numel() * 4 for p in params))
    assert sm.method == METHOD_CPU
    assert sm.retained_bytes <= 256  # steady state: nothing new left behind (CAME keeps a 0-d RMS)
    assert sm.transient_bytes <= budget, f"{name} foreach={foreach}: {sm.transient_bytes} > {budget}"


def test_foreach_adamw_transient_is_a_copy_of_the_params_and_slimadam_is_not():
    """torch's foreach Adam allocates sqrt(exp_avg_sq) for every tensor at once (~1x param bytes, as
    test_peak_memory_foreach allows); SlimAdam with paper rules allocates reduced denominators and one
    G*G temporary at a time for fan_out reductions (a whole gradient up to 256 KiB, else row blocks)."""
    from slimbench.optim._functional import _BLOCK_BYTES

    model, adamw = _ready("adamw", foreach=True)
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    a = step_memory(adamw).transient_bytes
    _, slim = _ready("slimadam", foreach=True)
    s = step_memory(slim).transient_bytes
    assert 0.9 * param_bytes <= a <= 1.1 * param_bytes
    largest = max(p.numel() * 4 for p in model.parameters())
    assert s <= min(largest, _BLOCK_BYTES) + 64 * 1024
    assert s < 0.25 * a


def test_profile_split_adds_up():
    res = profile("gpt2-tiny", ["adamw", "slimadam"], foreach=True, batch_size=2, seq_len=16, warmup=1)
    for row in res.rows:
        assert row.status == "ok", row.reason
        assert row.method == METHOD_CPU
        assert row.param_bytes == 120_576 * 4 and row.grad_bytes == row.param_bytes
        assert row.retained_bytes == 0 and row.within_budget
        assert row.peak_bytes >= row.param_bytes + row.state_bytes + row.grad_bytes + row.transient_bytes
        assert row.fwd_bwd_bytes >= row.grad_bytes  # gradients are created during backward
    assert res.row("slimadam").state_bytes < 0.52 * res.row("adamw").state_bytes  # tiny: 1-D tensors weigh more
    json.dumps(res.to_dict())


def test_profile_skips_unavailable_and_rejects_bad_settings():
    with pytest.raises(ValueError, match="CUDA"):
        profile("gpt2-tiny", ["adamw"], snapshot_dir="x")
    with pytest.raises(ValueError, match="block_size"):
        profile("gpt2-tiny", ["adamw"], seq_len=1000)
    res = profile("gpt2-tiny", ["sm3"], batch_size=1, seq_len=8, warmup=1, lr=0.1)
    assert res.row("sm3").status == "ok"


def test_cli_profile_json(capsys):
    code = main(["profile", "--model", "gpt2-tiny", "--optimizers", "sgd", "--batch-size", "1", "--seq-len", "8",
                 "--warmup", "1", "--format", "json"])
    assert code == 0
    obj = json.loads(capsys.readouterr().out)
    row = obj["optimizers"][0]
    assert row["optimizer"] == "sgd" and row["within_budget"] is True and row["method"] == METHOD_CPU


@cuda
@pytest.mark.cuda
def test_cuda_step_memory_and_snapshot(tmp_path):
    res = profile("gpt2-tiny", ["adamw", "slimadam"], device="cuda", foreach=True, snapshot_dir=tmp_path)
    for row in res.rows:
        assert row.status == "ok" and row.method == METHOD_CUDA
        assert row.snapshot and (tmp_path / row.snapshot.split("/")[-1]).exists()
        assert row.within_budget
    assert res.row("slimadam").transient_bytes < res.row("adamw").transient_bytes


@cuda
@pytest.mark.cuda
def test_cuda_ledger_matches_cpu():
    cpu_model, cpu_opt = _ready("slimadam")
    model = build_model("gpt2-tiny", "cuda")
    opt = build_optimizer("slimadam", model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    sm = step_memory(opt)  # first step: lazily created state is retained
    assert sm.method == METHOD_CUDA and sm.retained_bytes > 0
    assert optimizer_ledger(opt, model).state_bytes == optimizer_ledger(cpu_opt, cpu_model).state_bytes
