"""Per-rank optimizer-state bytes under FSDP2 sharding, by exact arithmetic on a measured (meta) ledger.

Nothing is allocated and no process group is needed: the unsharded ledger (from the meta-device audit)
says which tensors each optimizer holds, and this module places each one the way FSDP2 would:

* ``fully_shard`` puts every parameter on ``Shard(0)``, chunked as ``torch.chunk`` does: ``ceil(n/N)``
  rows per rank, so the tail ranks hold fewer rows, or none (:func:`chunk_rows`).
* State shaped like its parameter (``exp_avg``, Adam's ``exp_avg_sq``) is built with ``zeros_like`` of the
  DTensor parameter, so it is sharded the same way.
* SlimAdam's V follows :mod:`slimbench.distributed`: **replicated** at the reduced shape on every rank when
  K includes the sharded dim 0, ``Shard(0)`` of the reduced shape otherwise.
* 0-d tensors (step counters, AdaLayer's V) and group-level tensors are plain tensors on every rank.

For optimizers whose spec is not ``sharded`` (never run under FSDP2 by the tests) a state tensor with one
element per parameter element, or whose dim 0 equals its parameter's, is assumed to follow the parameter's
rows, anything else replicated: a prediction, labelled unverified. ``tests/test_distributed.py`` measures the per-rank ledger of the
verified ones at 3 ranks (uneven and empty shards) and requires 0 bytes of difference.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod

from slimbench.memory.ledger import Ledger, LedgerEntry

SHARD0 = "Shard(dim=0)"
REPLICATE = "Replicate()"


def chunk_rows(n: int, world: int) -> list[int]:
    """Rows of an ``n``-row tensor on each of ``world`` ranks under FSDP2's ``Shard(0)``.

    ``torch.chunk`` gives ``ceil(n / world)`` rows per chunk and fewer chunks than ranks when the rows run
    out; FSDP2 pads the list with empty shards, so e.g. 5 rows on 4 ranks are ``[2, 2, 1, 0]``."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    c = -(-n // world) if n else 0
    return [max(0, min(c, n - r * c)) for r in range(world)]


def placement(entry: LedgerEntry, param_shape: tuple[int, ...] | None,
              v_dims: tuple[int, ...] | None) -> tuple[str, int]:
    """Where ``entry`` lives under FSDP2 (:data:`SHARD0` or :data:`REPLICATE`) and over how many rows it
    is chunked (0 when replicated). ``v_dims`` is SlimAdam's K for this parameter (None otherwise)."""
    if param_shape is None or not param_shape or not entry.shape:
        return REPLICATE, 0  # group-level, unowned, 0-d state, or a 0-d parameter (not sharded)
    if v_dims is not None and entry.key == "exp_avg_sq":
        return (REPLICATE, 0) if 0 in v_dims else (SHARD0, entry.shape[0])
    if tuple(entry.shape) == tuple(param_shape):
        return SHARD0, param_shape[0]
    # Unverified guesses: state holding one element per parameter element in another shape (Adam-mini's
    # flat views) follows the parameter's rows; state indexed by the rows (Adafactor's row factor) too.
    if prod(entry.shape) == prod(param_shape):
        return SHARD0, param_shape[0]
    if entry.shape[0] == param_shape[0] and param_shape[0] > 1:
        return SHARD0, param_shape[0]
    return REPLICATE, 0


def _entry_bytes(entry: LedgerEntry, where: str, rows: int, world: int) -> list[int]:
    if where == REPLICATE or entry.bytes == 0:
        return [entry.bytes] * world
    if rows == 0:
        return [0] * world
    # An exact-size storage divides into equal rows; a view of a bigger buffer is split pro rata.
    return [-(-entry.bytes * r // rows) for r in chunk_rows(rows, world)]


@dataclass(frozen=True)
class RankBytes:
    """One optimizer's predicted state bytes on each rank, and whether a test proves the arithmetic."""

    optimizer: str
    per_rank: tuple[int, ...]
    verified: bool
    replicated_bytes: int  # bytes every rank holds in full (step counters, SlimAdam's reduced V's)

    @property
    def max(self) -> int:
        return max(self.per_rank)

    @property
    def min(self) -> int:
        return min(self.per_rank)

    @property
    def total(self) -> int:
        return sum(self.per_rank)

    def to_dict(self) -> dict:
        return {"optimizer": self.optimizer, "per_rank": list(self.per_rank), "max": self.max, "min": self.min,
                "total": self.total, "replicated_bytes": self.replicated_bytes, "verified": self.verified}


def predict(ledger: Ledger, param_shapes: Mapping[str, tuple[int, ...]], world: int, *, optimizer: str,
            verified: bool, v_dims: Mapping[str, tuple[int, ...]] | None = None) -> RankBytes:
    """Per-rank state bytes of ``ledger`` (an unsharded measurement) when the model is ``fully_shard``-ed
    over ``world`` ranks; ``v_dims`` maps parameter names to SlimAdam's K."""
    per_rank = [0] * world
    replicated = 0
    for e in ledger.entries:
        where, rows = placement(e, param_shapes.get(e.param), (v_dims or {}).get(e.param))
        if where == REPLICATE:
            replicated += e.bytes
        for r, b in enumerate(_entry_bytes(e, where, rows, world)):
            per_rank[r] += b
    return RankBytes(optimizer, tuple(per_rank), verified, replicated)


def param_bytes_per_rank(param_shapes: Mapping[str, tuple[int, ...]], itemsize: int, world: int) -> list[int]:
    """Parameter bytes each rank holds under ``Shard(0)`` (unpadded; FSDP2 pads its all-gather buffers)."""
    out = [0] * world
    for shape in param_shapes.values():
        row = itemsize
        for s in shape[1:]:
            row *= s
        rows = chunk_rows(shape[0], world) if shape else [1] * world
        for r, n in enumerate(rows):
            out[r] += n * row
    return out
