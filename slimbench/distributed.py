"""SlimAdam on sharded parameters: FSDP2 (``torch.distributed.fsdp.fully_shard``), tensor parallelism (DTensors)
and DDP.

DDP needs nothing: every rank holds whole parameters and all-reduced gradients, so every rank takes the
single-process step. Under FSDP2 a parameter is a DTensor sharded on dim 0 (``Shard(0)``: torch's chunking,
so the last ranks may hold fewer rows, or none). Under tensor parallelism
(``torch.distributed.tensor.parallel.parallelize_module``) ``ColwiseParallel`` shards an ``nn.Linear``
weight (out, in) on dim 0 and ``RowwiseParallel`` on dim 1 (``Shard(1)``: each rank holds a block of input
columns). Nothing here is specific to dim 0: SlimAdam steps the local shards and decides, per tensor,
from its compression dims K and its sharded dims S:

* **K includes a sharded dim** (FSDP2 with the paper's fan_out rules for value, output and MLP weights;
  a Rowwise ``Shard(1)`` weight with K = fan_in (1,); all dims): each rank sums G*G over K on its shard,
  the partial sums of every such tensor of a call are added across ranks in **one** all-reduce (one flat
  buffer per accumulation dtype), and each divides by the whole tensor's n_K. V then has the same values
  on every rank, so it is stored **replicated** at the reduced shape (a ``Replicate()`` DTensor: the K
  dims are size 1, so it is small; a Rowwise weight with K = (1,) keeps a replicated (out, 1) V).
* **K over local dims only** (FSDP2 with fan_in; a Rowwise weight with K = fan_out (0,); K = ()): no
  communication. V keeps the sharded dim, so it is **sharded like the parameter** (the same ``Shard(d)``
  of the global reduced shape: a Rowwise weight with K = (0,) holds V (1, in) on ``Shard(1)``, each rank
  the columns of its own shard).

``exp_avg`` is sharded like the parameter (as torch's AdamW keeps it). A gradient whose placements differ
from its parameter's (tensor parallelism hands an empty shard a ``Replicate()`` gradient) is redistributed
to them first (:func:`local_grad`). With both placements expressed as DTensors,
``torch.distributed.checkpoint`` saves and reshards SlimAdam's state like any other.

Not supported (a one-line error at the first step): fused weights with blocks (Q|K|V) that are sharded
(a block's rows would straddle ranks), placements other than Shard/Replicate (e.g. Partial), and
more than one mesh dim sharding the same tensor.
"""
from __future__ import annotations

from math import prod

import torch
import torch.distributed as dist
from torch import Tensor

from slimbench.optim._reduce import CrossRank, reduced_shape

try:  # torch >= 2.4 exposes DTensor publicly
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - old torch: nothing can be sharded
    DTensor = None  # type: ignore[assignment,misc]


def is_sharded(t: object) -> bool:
    """Whether ``t`` is a DTensor (a parameter or state of FSDP2 / tensor parallelism)."""
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The rank's own part of ``t`` (``t`` itself when it is a plain tensor); writes go through."""
    return t._local_tensor if is_sharded(t) else t


def local_grad(p: Tensor) -> Tensor:
    """The rank's part of ``p.grad`` laid out like its part of ``p``.

    Autograd need not give a DTensor's gradient the parameter's placements: under tensor parallelism the
    gradient of a parameter whose shard on this rank is empty comes back ``Replicate()`` (torch 2.13), and
    a ``Partial`` one is possible. Such a gradient is redistributed to the parameter's placements first
    (Replicate -> Shard is a local slice; Partial -> Shard a reduce-scatter)."""
    g = p.grad
    if is_sharded(g) and tuple(g.placements) != tuple(p.placements):
        g = g.redistribute(p.device_mesh, p.placements)
    return local(g)


def sharded_dims(p: Tensor, name: str = "parameter") -> dict[int, int]:
    """{tensor dim: mesh dim} of a DTensor's Shard placements; a clear error for what SlimAdam cannot step."""
    out: dict[int, int] = {}
    for mesh_dim, pl in enumerate(p.placements):
        if isinstance(pl, Shard):
            if pl.dim in out:
                raise ValueError(f"SlimAdam: {name!r} is sharded on dim {pl.dim} by two mesh dims "
                                 f"({p.placements}); only one Shard per tensor dim is supported")
            out[pl.dim] = mesh_dim
        elif not isinstance(pl, Replicate):
            raise ValueError(f"SlimAdam: {name!r} has placement {pl} ({p.placements}); only Shard and "
                             "Replicate are supported (a Partial parameter has no defined update)")
    return out


def crosses(p: Tensor, k: tuple[int, ...], name: str = "parameter") -> bool:
    """Whether V of ``p`` with K = ``k`` needs sums across ranks (K includes a sharded dim)."""
    return is_sharded(p) and any(d in k for d in sharded_dims(p, name))


def v_placements(p: Tensor, k: tuple[int, ...]) -> tuple:
    """V's placements: Replicate on the mesh dims whose sharded dim is reduced, the parameter's otherwise."""
    return tuple(Replicate() if isinstance(pl, Shard) and pl.dim in k else pl for pl in p.placements)


def zeros_v(p: Tensor, k: tuple[int, ...]) -> Tensor:
    """A zero V for a DTensor parameter: the global reduced shape, placed by :func:`v_placements`."""
    shape = reduced_shape(p.shape, k)
    lp = p._local_tensor
    local_shape = tuple(1 if i in k else s for i, s in enumerate(lp.shape))
    v = torch.zeros(local_shape, dtype=lp.dtype, device=lp.device)
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(v, p.device_mesh, v_placements(p, k), run_check=False, shape=torch.Size(shape),
                              stride=stride)


def all_reduce_sums(tensors: list[Tensor], group: dist.ProcessGroup | None = None) -> None:
    """Sum each tensor in place across ``group``: one all-reduce per dtype, through one flat buffer."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for ts in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in ts])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for t in ts:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


def cross_rank(params: list[Tensor], dims: list[tuple[int, ...]], names: list[str] | None = None) -> CrossRank | None:
    """The CrossRank phase for one call over (global) ``params``: None when no tensor is a DTensor.

    The all-reduce runs over the process group of the mesh dim that shards the reduced dim; every tensor
    of a call must use the same one (FSDP2 shards every parameter over one mesh dim)."""
    if not any(is_sharded(p) for p in params):
        return None
    counts: list[int | None] = []
    groups = set()
    for i, (p, k) in enumerate(zip(params, dims)):
        name = names[i] if names else f"tensor {i}"
        if crosses(p, k, name):
            mesh_dims = {m for d, m in sharded_dims(p, name).items() if d in k}
            mesh = p.device_mesh  # fully_shard builds a mesh per call: equal meshes are one group
            groups.update((tuple(mesh.mesh.shape), tuple(mesh.mesh.flatten().tolist()), m) for m in mesh_dims)
            if len(mesh_dims) != 1:
                raise ValueError(f"SlimAdam: {name!r} reduces V over dims sharded by {len(mesh_dims)} mesh dims; "
                                 "only one is supported")
            counts.append(prod(p.shape[d] for d in k))
        else:
            counts.append(None)
    if len(groups) > 1:
        raise ValueError("SlimAdam: parameters of one param group are sharded over different meshes; "
                         "put each mesh's parameters in their own param group")
    pg = None
    if groups:
        i = next(i for i, c in enumerate(counts) if c is not None)
        p = params[i]
        mesh_dim = next(m for d, m in sharded_dims(p).items() if d in dims[i])
        pg = p.device_mesh.get_group(mesh_dim)
    return CrossRank(tuple(counts), lambda ts: all_reduce_sums(ts, pg))


def local_numel(p: Tensor) -> int:
    """Entries of ``p`` held by this rank."""
    return local(p).numel()
