"""Worker side of tests/test_distributed.py: one gloo process group on 127.0.0.1, many checks per spawn
(process start-up, about 2-3 s, is the cost to amortise). Each check returns a dict; rank 0 collects them.

Every rank feeds the same batch, so FSDP2's averaged gradient equals the single-process gradient and the
sharded run can be compared with a plain run of a copy of the model, entry for entry, in fp64.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import os
import traceback
import warnings
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn


class Net(nn.Module):
    """A 2-D weight with uneven shards (7 rows), one with empty tail shards at 3-4 ranks (2 rows), a 4-D conv
    weight (3 filters: uneven / empty shards), and biases; names that the paper's rules recognise."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.up_proj = nn.Linear(6, 7)
        self.v_proj = nn.Linear(7, 2)
        self.down_proj = nn.Linear(2, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean(dim=(2, 3))  # (B, 3)
        h = torch.cat([h, h], dim=1)  # (B, 6)
        return self.down_proj(torch.tanh(self.v_proj(torch.tanh(self.up_proj(h)))))


def batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(4, 2, 5, 5, generator=g, dtype=torch.float64)


def loss_fn(model: nn.Module, step: int) -> torch.Tensor:
    return model(batch(step)).square().mean()


def subsets(n: int) -> list[tuple[int, ...]]:
    return [c for r in range(n + 1) for c in itertools.combinations(range(n), r)]


def full(t: torch.Tensor) -> torch.Tensor:
    from slimbench.distributed import is_sharded

    return t.full_tensor() if is_sharded(t) else t


def train(model: nn.Module, make_opt: Callable, steps: int, sched: bool = False) -> torch.optim.Optimizer:
    opt = make_opt(model)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s)) if sched else None
    for s in range(steps):
        loss_fn(model, s).backward()
        opt.step()
        opt.zero_grad()
        if lr_sched:
            lr_sched.step()
    return opt


def sharded_copy(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    m = copy.deepcopy(model)
    for sub in (m.conv, m.up_proj, m.v_proj, m.down_proj):
        fully_shard(sub)
    fully_shard(m)
    return m


def max_err(ref_model: nn.Module, ref_opt, model: nn.Module, opt) -> float:
    """Largest |difference| over parameters and every state tensor, sharded state gathered."""
    err = 0.0
    ref = dict(ref_model.named_parameters())
    for (n, p) in model.named_parameters():
        err = max(err, (full(p.detach()) - ref[n].detach()).abs().max().item())
        st, rst = opt.state[p], ref_opt.state[ref[n]]
        for key in rst:
            a, b = full(st[key]), rst[key]
            if a.shape != b.shape:
                return float("inf")
            err = max(err, (a - b).abs().max().item() if a.numel() else 0.0)
    return err


# What the fused path did with the tensors whose K crosses ranks, per check and config (rank-local), filled
# by native_spy and returned as results["native"]: tensors the native kernel stepped with the reduced sums
# given, nonempty ones it left whose K is a contiguous range (it should leave none) and whose K is not
# (those run foreach), and the SlimAdam warnings about sharded dims issued.
NATIVE_LOG: dict[str, dict] = {}


@contextlib.contextmanager
def native_spy(key: str):
    """Record into NATIVE_LOG[key] what ``_native.step_given`` took while the block runs, and the warnings."""
    from slimbench.optim import _backends, _native

    rec = NATIVE_LOG.setdefault(key, {"calls": 0, "taken": 0, "left_range": 0, "left_other": 0, "warnings": []})
    real = _native.step_given

    def spy(params, grads, exp_avgs, exp_avg_sqs, steps, dims, *a, **kw):
        rest = real(params, grads, exp_avgs, exp_avg_sqs, steps, dims, *a, **kw)
        rec["calls"] += 1
        rec["taken"] += len(params) - len(rest)
        for i in rest:
            if params[i].numel():
                rec["left_range" if _native.native_view(params[i].shape, dims[i]) else "left_other"] += 1
        return rest
    _native.step_given = spy
    _backends._warned.clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield rec
    finally:
        _native.step_given = real
        warnings.simplefilter("ignore")
    rec["warnings"] += [str(w.message) for w in caught if "across ranks" in str(w.message)]


QUICK_K4 = ((0,), (0, 2), (1, 2, 3), (0, 1, 2, 3))  # the default run's subset: crossing, non-contiguous, local, all


def check_equivalence(mode: str, steps: int = 6, quick: bool = False) -> dict:
    """SlimAdam sharded (FSDP2) or under DDP == one process, for the paper rules and every K on a 2-D and a
    4-D weight, on the for-loop, foreach and fused paths; AdaLayer; param groups + an lr schedule."""
    from slimbench import AdaLayer, SlimAdam

    torch.manual_seed(0)
    base = Net().double()
    wrap = sharded_copy if mode == "fsdp" else (lambda m: nn.parallel.DistributedDataParallel(copy.deepcopy(m)))
    errs: dict[str, float] = {}
    paths = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    k2, k4 = subsets(2), subsets(4)
    configs: list[tuple[str, object]] = [("paper", "paper")]
    for i, kc in enumerate(k4):
        if quick and kc not in QUICK_K4:
            continue
        configs.append((f"conv{list(kc)}/lin{list(k2[i % 4])}",
                        {"conv.weight": list(kc) or "none", "up_proj.weight": list(k2[i % 4]) or "none",
                         "v_proj.weight": list(k2[(i + 1) % 4]) or "none", "down_proj.weight": list(k2[(i + 2) % 4]) or "none"}))
    for (cname, rules), (pname, flags) in itertools.product(configs, paths.items()):
        if pname == "fused" and isinstance(rules, dict) and rules["conv.weight"] == [1, 3]:
            continue  # the one local, non-contiguous K: torch.compile (seconds per graph); same seam, tested unsharded

        def make(m: nn.Module, rules=rules, flags=flags) -> torch.optim.Optimizer:
            return SlimAdam(m, lr=0.02, betas=(0.9, 0.99), weight_decay=0.1, rules=rules, **flags)

        ref = copy.deepcopy(base)
        ref_opt = train(ref, make, steps)
        m = wrap(base)
        with native_spy(f"{mode} {cname}") if pname == "fused" else contextlib.nullcontext():
            opt = train(m, make, steps)
        errs[f"slimadam {cname} {pname}"] = max_err(ref, ref_opt, m.module if mode == "ddp" else m, opt)
    # param groups (no decay on the conv) and an lr schedule
    def grouped(m: nn.Module) -> torch.optim.Optimizer:
        named = list(m.named_parameters())
        return SlimAdam([{"params": [p for n, p in named if "conv" in n], "param_names": [n for n, _ in named if "conv" in n],
                          "weight_decay": 0.0, "lr": 0.05},
                         {"params": [p for n, p in named if "conv" not in n],
                          "param_names": [n for n, _ in named if "conv" not in n]}],
                        lr=0.02, weight_decay=0.1, rules="paper")
    ref = copy.deepcopy(base)
    ref_opt = train(ref, grouped, steps, sched=True)
    m = wrap(base)
    opt = train(m, grouped, steps, sched=True)
    errs["slimadam groups+schedule"] = max_err(ref, ref_opt, m.module if mode == "ddp" else m, opt)
    for foreach in (False, True):
        def ada(m: nn.Module, foreach=foreach) -> torch.optim.Optimizer:
            return AdaLayer(m.named_parameters(), lr=0.02, weight_decay=0.1, foreach=foreach, full_adam=("norm",))
        ref = copy.deepcopy(base)
        ref_opt = train(ref, ada, steps)
        m = wrap(base)
        opt = train(m, ada, steps)
        errs[f"adalayer foreach={foreach}"] = max_err(ref, ref_opt, m.module if mode == "ddp" else m, opt)
    return errs


def step_counting_all_reduces(opt: torch.optim.Optimizer) -> int:
    """``opt.step()`` then ``zero_grad()``; returns the ``dist.all_reduce`` calls the step issued."""
    calls = 0
    real = dist.all_reduce

    def counting(*a, **kw):
        nonlocal calls
        calls += 1
        return real(*a, **kw)
    dist.all_reduce = counting
    try:
        opt.step()
    finally:
        dist.all_reduce = real
    opt.zero_grad()
    return calls


class TPNet(nn.Module):
    """Two tensor-parallel pairs (torch's ColwiseParallel: weight and bias Shard(0); RowwiseParallel: weight
    Shard(1), bias Replicate): 7 hidden features (uneven shards at 2 and 3 ranks) and 2 (an empty tail shard
    on both dims at 3 ranks)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 7), nn.Linear(7, 4)
        self.fc3, self.fc4 = nn.Linear(4, 2), nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc4(torch.tanh(self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))))


TP_K = ((), (0,), (1,), (0, 1))
# Colwise crossing (fc1) and local (fc3), Rowwise crossing (fc2: V replicated) and local (fc4: V Shard(1))
TP_MIX = {"fc1.weight": [0], "fc2.weight": [1], "fc3.weight": [1], "fc4.weight": [0]}


def _tp_train(model: nn.Module, rules: object, flags: dict, steps: int,
              adalayer: bool = False) -> tuple[torch.optim.Optimizer, int]:
    """``steps`` SlimAdam (or AdaLayer) steps on TPNet; returns the optimizer and the all-reduces of the
    last step."""
    from slimbench import AdaLayer, SlimAdam

    opt = (AdaLayer(model.named_parameters(), lr=0.02, betas=(0.9, 0.99), weight_decay=0.1, **flags) if adalayer
           else SlimAdam(model, lr=0.02, betas=(0.9, 0.99), weight_decay=0.1, rules=rules, **flags))
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    calls = 0
    for s in range(steps):
        model(x * (1 + 0.1 * s)).square().mean().backward()
        calls = step_counting_all_reduces(opt)
    return opt, calls


def check_tensor_parallel(steps: int = 6, quick: bool = False) -> dict:
    """SlimAdam on a tensor-parallel model (parallelize_module: fc1/fc3 Colwise, Shard(0); fc2/fc4 Rowwise,
    Shard(1)) == one process, for K = (), (0,), (1,), (0, 1) on every weight and one mix, on the for-loop,
    foreach and fused paths (``quick``: the mix only): a K with dim 1 crosses ranks on the Rowwise
    weights, one with dim 0 on the Colwise ones. Also V's global shape and placements per weight, and
    the all-reduces of one step."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    base = TPNet().double()
    # DTensors between the pairs: the local output of an uneven shard would be taken for an even one
    plan = {"fc1": ColwiseParallel(use_local_output=False), "fc2": RowwiseParallel(),
            "fc3": ColwiseParallel(use_local_output=False), "fc4": RowwiseParallel()}
    configs: dict[str, object] = {f"K={list(k)}": {f"fc{i}.weight": list(k) or "none" for i in range(1, 5)}
                                  for k in TP_K if not quick}
    configs["mix"] = TP_MIX
    paths = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    out: dict[str, dict] = {"errs": {}, "v": {}, "all_reduces": {}}
    for (cname, rules), (pname, flags) in itertools.product(configs.items(), paths.items()):
        ref = copy.deepcopy(base)
        ref_opt, _ = _tp_train(ref, rules, flags, steps)
        m = parallelize_module(copy.deepcopy(base), mesh, plan)
        with native_spy(f"tp {cname}") if pname == "fused" else contextlib.nullcontext():
            opt, calls = _tp_train(m, rules, flags, steps)
        out["errs"][f"{cname} {pname}"] = max_err(ref, ref_opt, m, opt)
        out["all_reduces"][f"{cname} {pname}"] = calls
        for name, p in m.named_parameters():
            if name.endswith("weight") and pname == "loop":
                v = opt.state[p]["exp_avg_sq"]
                out["v"][f"{cname} {name}"] = (p.placements, tuple(v.shape), v.placements)
    return out


def check_tensor_parallel_adalayer(steps: int = 6) -> dict:
    """AdaLayer (one V per weight: every K crosses ranks) on the tensor-parallel TPNet == one process, on
    the for-loop and foreach paths; the empty shards' Replicate() gradients included."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    base = TPNet().double()
    plan = {"fc1": ColwiseParallel(use_local_output=False), "fc2": RowwiseParallel(),
            "fc3": ColwiseParallel(use_local_output=False), "fc4": RowwiseParallel()}
    errs = {}
    for pname, flags in (("loop", dict(foreach=False)), ("foreach", dict(foreach=True))):
        ref = copy.deepcopy(base)
        ref_opt, _ = _tp_train(ref, None, flags, steps, adalayer=True)
        m = parallelize_module(copy.deepcopy(base), mesh, plan)
        opt, _ = _tp_train(m, None, flags, steps, adalayer=True)
        errs[pname] = max_err(ref, ref_opt, m, opt)
    return errs


def count_collectives() -> dict:
    """Collectives issued by one SlimAdam step under FSDP2 with the paper rules: one all-reduce per call
    with a K over the sharded dim (one param group, weight decay split: the 1-D call has none)."""
    from slimbench import SlimAdam

    torch.manual_seed(0)
    m = sharded_copy(Net().double())
    out = {}
    for rules, name in (("paper", "paper"), ({"conv.weight": [1, 2, 3], "up_proj.weight": "fan_in"}, "local")):
        for flags in (dict(foreach=False), dict(foreach=True), dict(fused=True)):
            opt = SlimAdam(m, lr=0.01, weight_decay=0.1, rules=rules, **flags)
            loss_fn(m, 0).backward()
            with native_spy(f"collectives {name}") if "fused" in flags else contextlib.nullcontext():
                out[f"{name} {next(iter(flags.items()))}"] = step_counting_all_reduces(opt)
    return out


def check_snr(steps: int = 3) -> dict:
    """The SNR tracker on AdamW's sharded V (FSDP2) records what it records for one process."""
    from slimbench.snr.tracker import track_snr

    torch.manual_seed(0)
    base = Net().double()
    series = []
    for m in (copy.deepcopy(base), sharded_copy(base)):
        opt = torch.optim.AdamW(m.parameters(), lr=0.02)
        with track_snr(m, opt, schedule="every:1") as tracker:
            for s in range(steps):
                loss_fn(m, s).backward()
                opt.step()
                opt.zero_grad()
        series.append(tracker._snr)
    ref, got = series
    errs = [abs(a - b) / max(abs(a), 1e-300) for e in ref for k in ref[e] for a, b in zip(ref[e][k], got[e][k])]
    return {"entries": len(ref), "values": len(errs), "max_rel_err": max(errs) if errs else float("inf"),
            "same_keys": ref.keys() == got.keys() and all(ref[e].keys() == got[e].keys() for e in ref)}


def _ckpt_opt(m: nn.Module) -> torch.optim.Optimizer:
    from slimbench import SlimAdam

    return SlimAdam(m, lr=0.02, betas=(0.9, 0.99), weight_decay=0.1, rules="paper")


def checkpoint_save(path: str, steps: int = 3) -> dict:
    """Train ``steps`` sharded steps, then save model and optimizer with torch.distributed.checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.manual_seed(0)
    m = sharded_copy(Net().double())
    opt = train(m, _ckpt_opt, steps)
    msd, osd = get_state_dict(m, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
    return {"saved": steps}


def checkpoint_resume(path: str, steps: int = 3, total: int = 6) -> dict:
    """Load the checkpoint on this world size (resharding), train to ``total`` steps, and compare with an
    uninterrupted single-process run of ``total`` steps."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    torch.manual_seed(0)
    base = Net().double()
    ref = copy.deepcopy(base)
    ref_opt = train(ref, _ckpt_opt, total)
    m = sharded_copy(base)
    opt = _ckpt_opt(m)
    msd, osd = get_state_dict(m, opt)
    sd = {"model": msd, "optim": osd}
    dcp.load(sd, checkpoint_id=path)
    set_state_dict(m, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    for s in range(steps, total):
        loss_fn(m, s).backward()
        opt.step()
        opt.zero_grad()
    return {"err": max_err(ref, ref_opt, m, opt)}


# (label, registry name, SlimAdam rules): the paper's (V replicated where K has the sharded dim 0) and one
# whose K never has dim 0 but for one weight (V Shard(0) like the parameter)
SHARDED_AUDIT = (("adamw", "adamw", None), ("slimadam paper", "slimadam", "paper"),
                 ("slimadam local K", "slimadam", {"conv.weight": [1, 2, 3], "up_proj.weight": "fan_in",
                                                   "v_proj.weight": "fan_in", "down_proj.weight": [0]}),
                 ("adalayer", "adalayer", None),
                 # the other specs that check_registry finds equal to one process (sharded=True)
                 *((n, n, None) for n in ("adam", "sgd", "adalayer+ln+tl", "adam-mini", "lion")))


def check_audit_per_rank(names: str = "") -> dict:
    """Measured per-rank ledger of each optimizer after one FSDP2 step vs the audit's per-rank arithmetic
    (from the unsharded meta-device state): {label: (measured, predicted, all ranks predicted, verified)}
    for this rank, plus this rank's ledger entries where they differ, to point at the culprit."""
    from slimbench.memory.audit import audit
    from slimbench.memory.ledger import optimizer_ledger
    from slimbench.registry import build_optimizer

    rank, world = dist.get_rank(), dist.get_world_size()
    out: dict = {}
    cases = tuple((n, n, None) for n in names.split(",")) if names else SHARDED_AUDIT
    for label, name, rules in cases:
        with torch.device("meta"):
            meta = Net()
        row = audit(meta, [name], rules=rules, dtype=torch.float64, world_size=world).row(name)
        torch.manual_seed(0)
        m = sharded_copy(Net().double())
        opt = build_optimizer(name, m, **({"rules": rules} if rules else {}))
        loss_fn(m, 0).backward()
        opt.step()
        ledger = optimizer_ledger(opt, m)
        out[label] = (ledger.state_bytes, row.sharded.per_rank[rank], row.sharded.per_rank, row.sharded.verified)
        if ledger.state_bytes != row.sharded.per_rank[rank]:
            out[f"{label} entries"] = [e.to_dict() for e in ledger.entries]
    return out


def _max_err_any(ref_model: nn.Module, ref_opt, model: nn.Module, opt) -> float:
    """Like :func:`max_err` over parameters and every tensor state entry (non-tensor state compared by ==),
    for third-party optimizers whose state may be shaped unlike the parameter (inf where shapes differ)."""
    err, why = 0.0, ""
    ref = dict(ref_model.named_parameters())
    for n, p in model.named_parameters():
        err = max(err, (full(p.detach()) - ref[n].detach()).abs().max().item())
        st, rst = opt.state.get(p, {}), ref_opt.state.get(ref[n], {})
        if st.keys() != rst.keys():
            return float("inf"), f"{n}: state keys {sorted(st)} vs {sorted(rst)}"
        for key, b in rst.items():
            a = st[key]
            if isinstance(b, torch.Tensor):
                a = full(a) if isinstance(a, torch.Tensor) else torch.as_tensor(a)
                if a.shape != b.shape:
                    return float("inf"), f"{n}: state {key!r} shaped {tuple(a.shape)} vs {tuple(b.shape)}"
                e = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
                if e > err:
                    err, why = e, f"{n}: state {key!r}"
            elif type(a) in (int, float, bool, str) and a != b:
                return float("inf"), f"{n}: state {key!r} {a!r} vs {b!r}"
    return err, why


def check_registry(steps: int = 2) -> dict:
    """Every available registry optimizer under FSDP2 (the spec's sensible lr, 2 steps, fp64) vs one process:
    {name: ("equal", err) | ("differs", where) | ("raised", one-line reason) | ("unavailable", reason)}."""
    from slimbench.registry import REGISTRY, available, build_optimizer

    ok = {a.name: a for a in available()}
    out: dict = {}
    for name, spec in REGISTRY.items():
        if not ok[name].ok:
            out[name] = ("unavailable", ok[name].reason.splitlines()[0] if ok[name].reason else "")
            continue
        torch.manual_seed(0)
        base = Net().double()

        def make(m: nn.Module, name=name, lr=spec.sensible_lr) -> torch.optim.Optimizer:
            return build_optimizer(name, m, lr=lr)
        try:
            ref = copy.deepcopy(base)
            ref_opt = train(ref, make, steps)
        except Exception as e:  # noqa: BLE001 -- recorded; the test reports it
            out[name] = ("raised", f"one process: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        try:
            m = sharded_copy(base)
            opt = train(m, make, steps)
            err, why = _max_err_any(ref, ref_opt, m, opt)
        except Exception as e:  # noqa: BLE001 -- recorded; the test reports it
            out[name] = ("raised", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])
            continue
        out[name] = ("equal", err) if err <= 1e-10 else ("differs", f"max |error| {err:.3g} ({why or 'parameters'})")
    return out


CHECKS = {"fsdp": lambda: check_equivalence("fsdp"), "ddp": lambda: check_equivalence("ddp"),
          "fsdp-quick": lambda: check_equivalence("fsdp", quick=True), "collectives": count_collectives, "snr": check_snr, "audit": check_audit_per_rank,
          "ckpt-save": checkpoint_save, "tp": check_tensor_parallel,
          "tp-quick": lambda: check_tensor_parallel(quick=True), "tp-adalayer": check_tensor_parallel_adalayer, "registry": check_registry, "ckpt-resume": checkpoint_resume}


def main(rank: int, world: int, port: int, checks: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results: dict = {}
    try:
        for c in checks:
            name, _, arg = c.partition(":")
            results[name] = CHECKS[name](arg) if arg else CHECKS[name]()
    except Exception:  # noqa: BLE001 -- reported to the test, which fails with the traceback
        results["error"] = traceback.format_exc()
    finally:
        results["native"] = NATIVE_LOG
        torch.save(results, f"{out}.{rank}")
        dist.destroy_process_group()
