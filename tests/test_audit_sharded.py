"""`audit --world-size N`: per-rank optimizer-state bytes under FSDP2, by arithmetic (no process group).

The byte-exact check against measured per-rank ledgers needs gloo ranks and lives in
tests/test_distributed.py (test_audit_per_rank_equals_measured_ledger); these are the fast checks of the
arithmetic's pieces and of the command line."""
from __future__ import annotations

import json

import pytest
import torch

import dist_worker
from slimbench.cli import main
from slimbench.memory.audit import audit
from slimbench.memory.sharded import chunk_rows
from slimbench.registry import REGISTRY

OPTS = ("adamw", "slimadam", "adalayer", "adafactor", "sgd")


@pytest.mark.parametrize("world", range(1, 7))
def test_chunk_rows_is_torch_chunk_padded_with_empty_shards(world: int) -> None:
    for n in range(13):
        chunks = [len(c) for c in torch.arange(n).chunk(world)] if n else []
        assert chunk_rows(n, world) == chunks + [0] * (world - len(chunks)), (n, world)


def _net_audit(world: int, rules: object = "paper"):
    with torch.device("meta"):
        meta = dist_worker.Net()
    return audit(meta, OPTS, rules=rules, world_size=world)


def test_one_rank_holds_the_unsharded_ledger() -> None:
    res = _net_audit(1)
    for r in res.rows:
        assert r.sharded.per_rank == (r.ledger.state_bytes,), r.optimizer


@pytest.mark.parametrize("world", [2, 3, 4, 9])
def test_sharded_bytes_add_up_to_the_unsharded_state(world: int) -> None:
    """Summed over ranks, each byte of state is held once, except the replicated ones, held by every rank."""
    for rules in ("paper", {"conv.weight": [1, 2, 3], "up_proj.weight": "fan_in", "v_proj.weight": [0, 1]}):
        res = _net_audit(world, rules)
        for r in res.rows:
            s = r.sharded
            assert len(s.per_rank) == world
            assert s.total - (world - 1) * s.replicated_bytes == r.ledger.state_bytes, (r.optimizer, rules, s)
        assert sum(res.param_bytes_per_rank) == res.param_bytes


def test_slimadam_v_is_replicated_only_where_k_has_the_sharded_dim() -> None:
    """v_proj.weight (2x7): K=(0,) -> its 1x7 V on every rank; K=(1,) -> the 2x1 V split [1, 1, 0] rows."""
    per_rank = {}
    for k in ([0], [1]):
        row = _net_audit(3, {"v_proj.weight": k}).row("slimadam")
        per_rank[k[0]] = row.sharded
    rep, shard = per_rank[0], per_rank[1]
    assert rep.replicated_bytes == shard.replicated_bytes + 7 * 4
    assert [a - b for a, b in zip(rep.per_rank, shard.per_rank)] == [7 * 4 - 4, 7 * 4 - 4, 7 * 4]


def test_registry_sharded_flags_are_what_the_gloo_test_measures() -> None:
    """A spec says sharded=True exactly when tests/test_distributed.py measures it under FSDP2."""
    measured = {name for _, name, _ in dist_worker.SHARDED_AUDIT}
    assert {n for n, s in REGISTRY.items() if s.sharded} == measured
    assert {"adamw", "slimadam"} <= measured


def test_cli_world_size_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--model", "gpt2-tiny", "--optimizers", "adamw,slimadam,adafactor", "--world-size", "3",
                 "--format", "json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["world_size"] == 3 and len(obj["param_bytes_per_rank"]) == 3
    flags = {o["optimizer"]: o["sharded"]["verified"] for o in obj["optimizers"]}
    assert flags == {"adamw": True, "slimadam": True, "adafactor": False}
    assert main(["audit", "--model", "gpt2-tiny", "--optimizers", "adamw,adafactor", "--world-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "FSDP2 over 3 ranks" in out and "verified (registry sharded=True" in out
    assert "UNVERIFIED predictions" in out and "adafactor" in out.split("UNVERIFIED predictions")[1]


def test_cli_slimadam_refuses_sharded_fused_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--model", "gpt2-tiny-fused", "--optimizers", "slimadam", "--world-size", "2"]) == 0
    assert "refused: SlimAdam does not step sharded fused weights with blocks" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["0", "-1", "two", "2.5", ""])
def test_cli_bad_world_size_is_one_line(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--model", "gpt2-tiny", "--world-size", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--world-size must be an integer >= 1" in err[0], err


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "3"])
def test_api_bad_world_size(bad: object) -> None:
    with pytest.raises(ValueError, match="world_size must be an integer >= 1"):
        audit("gpt2-tiny", ["adamw"], world_size=bad)
