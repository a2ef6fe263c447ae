"""The audit's predicted optimizer-state bytes vs the CUDA caching allocator (issue 14.3).

On CUDA: the growth of ``torch.cuda.memory_allocated`` over the first step equals the meta audit's state,
each tensor rounded up to the allocator's 512-byte blocks, for AdamW and SlimAdam (paper rules). On CPU:
the rounding arithmetic, and the prediction from the meta audit's ledger against state tensors stepped
for real on the CPU, counted independently.
"""
from __future__ import annotations

import pytest
import torch

from slimbench.memory.audit import audit
from slimbench.memory.cuda_check import (ALLOCATOR_BLOCK, AllocatedCheck, allocator_bytes, audit_vs_allocated,
                                         predicted_device_bytes)
from slimbench.registry import build_optimizer
from slimbench.tasks.presets import build_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MODEL = "gpt2-tiny"


def test_allocator_rounding() -> None:
    assert ALLOCATOR_BLOCK == 512
    assert [allocator_bytes(n) for n in (0, 1, 4, 511, 512, 513, 1024, 1025)] == [0, 512, 512, 512, 512, 1024,
                                                                                   1024, 1536]
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        allocator_bytes(-1)


@pytest.mark.parametrize("name", ["adamw", "slimadam"])
def test_prediction_from_the_meta_audit_matches_real_state_rounded(name: str) -> None:
    """Predicted from the meta-device ledger == every state tensor of a real CPU step, each rounded up to
    512 bytes by hand, with the step counters (CPU tensors on every device) left out."""
    ledger = audit(MODEL, [name]).row(name).ledger
    got, n = predicted_device_bytes(ledger)
    model = build_model(MODEL, "cpu")
    opt = build_optimizer(name, model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    tensors = [t for st in opt.state.values() for k, t in st.items() if torch.is_tensor(t) and k != "step"]
    want = sum(-(-t.numel() * t.element_size() // 512) * 512 for t in tensors)
    assert (got, n) == (want, len(tensors))
    assert got >= ledger.state_bytes - 4 * len(opt.state)  # rounding only adds (each step counter is 4 bytes)
    if name == "slimadam":  # compressed V: most of the rounding is on the small V tensors
        assert got < predicted_device_bytes(audit(MODEL, ["adamw"]).row("adamw").ledger)[0]


def test_check_row_compares_exactly() -> None:
    row = AllocatedCheck("adamw", 1000, 1536, 3, 1536)
    assert row.equal and row.to_dict()["difference"] == 0
    off = AllocatedCheck("adamw", 1000, 1536, 3, 2048)
    assert not off.equal and off.to_dict()["difference"] == 512


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_refuses_rather_than_guessing() -> None:
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        audit_vs_allocated(MODEL, device="cuda")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        audit_vs_allocated(MODEL, device="cpu")


@cuda
@pytest.mark.cuda
def test_audit_equals_cuda_memory_allocated_growth() -> None:
    res = audit_vs_allocated(MODEL, ["adamw", "slimadam"])
    d = res.to_dict()
    assert d["format"] == "slimbench.audit_vs_allocated"
    assert [r["optimizer"] for r in d["rows"]] == ["adamw", "slimadam"]
    for row in res.rows:
        assert row.measured_growth == row.predicted_device_bytes, row.to_dict()
    adamw, slim = res.rows
    assert slim.predicted_device_bytes < adamw.predicted_device_bytes and res.all_equal
