"""Runs under FSDP2 (``torchrun --nproc_per_node N -m slimbench run ... --fsdp``, or one submitit job of N
tasks: ``run ... --fsdp N --executor submitit``): process group and sharding.

The process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...; a
submitit task exports the same variables from its job first, :mod:`slimbench.bench.sweep`):
gloo for CPU tensors and, where CUDA is present, NCCL for CUDA tensors (``"cpu:gloo,cuda:nccl"``), so the
same command runs on a laptop and on a GPU node (today's tasks build on CPU, so gloo carries their
collectives; the NCCL mapping is untested here). The model is sharded where the task built it: every block
of each ``nn.ModuleList`` is its own ``fully_shard`` unit, then the root (which holds the rest, tied
weights included). Every rank trains on the task's batch, the same on all ranks, so FSDP2's averaged
gradient is the one-process gradient: a sharded run reproduces the unsharded one and saves memory, not
data throughput.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

TORCHRUN_HINT = "run it under torchrun, e.g. `torchrun --nproc_per_node 2 -m slimbench run ... --fsdp`"


def init_from_env() -> int:
    """Join torchrun's process group (once); return the world size. A clear error outside torchrun."""
    if not dist.is_available():
        raise ValueError("--fsdp needs torch.distributed, which this torch build lacks")
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ValueError(f"--fsdp needs torchrun's environment ({', '.join(missing)} unset): {TORCHRUN_HINT}")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_world_size()


def finish(ok: bool) -> None:
    """After a clean sweep, wait for every rank (rank 0 may still be writing results), then leave the
    group. After an error, leave at once: the rank exits non-zero and torchrun stops the others, which a
    barrier would instead leave waiting inside a collective forever."""
    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def shard(model: nn.Module, world: int) -> nn.Module:
    """``fully_shard`` each ModuleList block, then the root, on a 1-D mesh of the model's device type."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized() or dist.get_world_size() != world:
        got = dist.get_world_size() if dist.is_initialized() else "no process group"
        raise ValueError(f"a run with fsdp={world} needs a process group of {world} ranks (got {got}); {TORCHRUN_HINT}")
    device = next(model.parameters()).device.type
    mesh = init_device_mesh(device, (world,))
    for mod in list(model.modules()):
        if isinstance(mod, nn.ModuleList):
            for block in mod:
                fully_shard(block, mesh=mesh)
    # The root reshards after forward too (torch's default keeps its unsharded tensors until backward): an
    # eval forward has no backward, and until the next one model.parameters() would list those unsharded
    # tensors, not the DTensors the optimizer holds, so a loop that lists the parameters after validating
    # (clip_grad_norm_ over them) saw no gradients of the root's weights and a wrong norm. Cost: one
    # all-gather of the root's own weights (embeddings, final norm, head) per backward.
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


def full_value(t: torch.Tensor) -> float:
    """A scalar that may be a DTensor (clip_grad_norm_ over sharded grads) as a Python float."""
    return float(t.full_tensor() if hasattr(t, "full_tensor") else t)


def gather_ints(value: int) -> list[int]:
    """``value`` from every rank, in rank order (one all_gather_object)."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return [int(v) for v in out]
