"""The optimizer-state ledger: real tensors, recursive walk, shared storages once, exact bytes."""
from __future__ import annotations

import torch
from torch import nn

from slimbench import SlimAdam
from slimbench.memory.ledger import optimizer_ledger, second_moment_keys, tensor_bytes
from slimbench.registry import build_optimizer


class _Holder:
    """A plain object in state, like GaLore's projector."""

    def __init__(self, t: torch.Tensor) -> None:
        self.matrix = t
        self.rank = 4


class Hoarder(torch.optim.Optimizer):
    """An optimizer whose state nests tensors every way the walk must handle."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                buf = torch.zeros(10, 10)
                self.state[p] = {
                    "step": torch.tensor(0.0),  # 4 bytes
                    "buf": buf,  # 400 bytes
                    "view": buf[2:5],  # shares buf's storage: 0 bytes
                    "nested": {"pair": (torch.zeros(3), [torch.zeros(2, dtype=torch.float64)])},  # 12 + 16
                    "obj": _Holder(torch.zeros(5, dtype=torch.int8)),  # 5
                    "alias": p.detach(),  # the parameter's own storage: 0 state bytes
                    "count": 7,  # python scalar: 0 bytes
                }


def test_walk_nested_shared_and_aliased():
    lin = nn.Linear(4, 3)  # weight 12 + bias 3 floats
    opt = Hoarder(lin.parameters())
    opt.step()
    led = optimizer_ledger(opt, lin)
    assert led.param_bytes == 15 * 4 and led.param_numel == 15 and led.n_params == 2
    per_param = 4 + 400 + 12 + 16 + 5
    assert led.state_bytes == 2 * per_param
    keys = {e.key for e in led.entries if e.param == "weight"}
    assert keys == {"step", "buf", "view", "nested.pair[0]", "nested.pair[1][0]", "obj.matrix", "alias"}
    shared = {e.key for e in led.entries if e.shared}
    assert shared == {"view", "alias"}
    assert led.python_scalars == 2 * 2  # "count" and obj.rank, per parameter
    assert led.by_key()["nested"] == 2 * 28
    assert led.by_param() == {"weight": per_param, "bias": per_param}


def test_shared_state_across_parameters_counts_once():
    a, b = nn.Parameter(torch.zeros(8)), nn.Parameter(torch.zeros(8))
    opt = Hoarder([a, b])
    common = torch.zeros(100)
    opt.state[a] = {"x": common}
    opt.state[b] = {"x": common.view(10, 10)}
    led = optimizer_ledger(opt)
    assert led.state_bytes == 400
    assert [e.param for e in led.entries] == ["param0", "param1"]
    assert [e.shared for e in led.entries] == [False, True]


def _named_model() -> nn.Module:
    m = nn.Module()
    m.q_proj = nn.Linear(8, 16, bias=True)  # query: fan_in -> V (16, 1)
    m.mlp = nn.Module()
    m.mlp.up_proj = nn.Linear(16, 32, bias=False)  # mlp_up: fan_out -> V (1, 16)
    m.norm = nn.LayerNorm(32)  # 1-D: full
    return m


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()


def test_slimadam_state_bytes_exact():
    model = _named_model()
    opt = SlimAdam(model.named_parameters(), rules="paper")
    _step(model, opt)
    led = optimizer_ledger(opt, model)
    numel = 16 * 8 + 16 + 32 * 16 + 32 + 32
    v_numel = 16 + 16 + 16 + 32 + 32  # q (16,1), q bias (16), up (1,16), norm w/b
    n_tensors = 5
    assert led.param_numel == numel
    assert led.state_bytes == 4 * numel + 4 * v_numel + 4 * n_tensors
    assert led.second_moments == v_numel
    assert abs(led.second_moment_saved_fraction - (1 - v_numel / numel)) < 1e-12
    shapes = {e.param: e.shape for e in led.entries if e.key == "exp_avg_sq"}
    assert shapes["q_proj.weight"] == (16, 1) and shapes["mlp.up_proj.weight"] == (1, 16)
    assert led.ratio == led.state_bytes / (4 * numel)


def test_adamw_and_sgd_exact_and_second_moment_identification():
    model = _named_model()
    numel = sum(p.numel() for p in model.parameters())
    adamw = torch.optim.AdamW(model.parameters())
    _step(model, adamw)
    led = optimizer_ledger(adamw, model)
    assert led.state_bytes == 2 * 4 * numel + 4 * 5
    assert led.second_moment_saved_fraction == 0.0 and led.second_moment_source == "torch.AdamW"
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _step(model, sgd)
    led = optimizer_ledger(sgd, model)
    assert led.state_bytes == 4 * numel and led.second_moment_saved_fraction == 1.0


def test_factored_optimizers_second_moments():
    model = _named_model()
    opt = torch.optim.Adafactor(model.parameters())
    _step(model, opt)
    led = optimizer_ledger(opt, model)
    # row_var + col_var for the 2 matrices, variance for the 3 vectors
    assert led.second_moments == (16 + 8) + (32 + 16) + 16 + 32 + 32
    sm3 = build_optimizer("sm3", model, lr=0.1)
    _step(model, sm3)
    keys, source = second_moment_keys(sm3)
    assert source == "pytorch_optimizer.SM3"
    led = optimizer_ledger(sm3, model)
    assert {e.key for e in led.entries if e.second_moment} == {"accumulator_0", "accumulator_1"}


def test_adam_mini_names_from_groups_and_python_step():
    model = _named_model()
    opt = build_optimizer("adam-mini", model, dim=8, n_heads=2)
    _step(model, opt)
    led = optimizer_ledger(opt)  # no model given: names come from adam-mini's groups
    assert {e.param for e in led.entries} == {n for n, _ in model.named_parameters()}
    assert led.python_scalars > 0  # adam-mini keeps step as a python int
    assert led.second_moments < led.param_numel


def test_meta_device_matches_cpu():
    cpu = _named_model()
    opt = SlimAdam(cpu.named_parameters(), rules="paper")
    _step(cpu, opt)
    with torch.device("meta"):
        meta = _named_model()
    mopt = SlimAdam(meta.named_parameters(), rules="paper")
    for p in meta.parameters():
        p.grad = torch.empty_like(p)
    mopt.step()
    a, b = optimizer_ledger(opt, cpu), optimizer_ledger(mopt, meta)
    assert a.state_bytes == b.state_bytes and a.second_moments == b.second_moments
    assert b.devices == ("cpu", "meta")  # step counters stay on the CPU, as in torch
    assert tensor_bytes(p for p in meta.parameters()) == tensor_bytes(p for p in cpu.parameters())


def test_to_dict_is_plain_data():
    model = _named_model()
    opt = SlimAdam(model.named_parameters(), rules="paper")
    _step(model, opt)
    d = optimizer_ledger(opt, model).to_dict()
    import json

    json.dumps(d)
    assert {"state_bytes", "param_bytes", "ratio", "second_moments", "second_moment_saved_fraction",
            "entries"} <= set(d)
    assert d["entries"][0]["param"] == "q_proj.weight"
