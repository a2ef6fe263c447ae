"""A ledger of an optimizer's state: every tensor it holds, per parameter and per state key, measured.

The ledger never computes state size from a formula. It walks ``optimizer.state`` (and the param groups)
recursively and reads the tensors that are actually there: tensors nested in lists, tuples, dicts and in
plain objects (GaLore keeps its projection matrix in a ``GaLoreProjector`` object) all count. It works
the same on the meta device, where tensors have shapes, dtypes and storages but no memory, which is what
lets :mod:`slimbench.memory.audit` size an 8B-parameter model's optimizer state without allocating it.

Accounting (what a byte is):
    * A tensor's bytes are the bytes of its storage (``untyped_storage().nbytes()``), so a view of a
      bigger buffer (Adam-mini's ``m.view(-1, head_numel)``) is charged the whole buffer, once.
    * Storages are counted once: the first entry that reaches a storage is charged, later entries that
      share it are listed with ``shared=True`` and 0 bytes. Storages of the parameters themselves are
      seen first, so state that aliases a parameter costs no state bytes.
    * Step counters count when they are tensors (torch keeps a 0-d float32 ``step`` per parameter:
      4 bytes each). Python numbers in state (Adam-mini's ``step``, CAME's ``RMS`` on some paths) hold no
      tensor memory; they are counted in ``python_scalars`` and charged 0 bytes.

"Second moments" are the entries an optimizer keeps as its estimate of E[g^2] (Adam's V), identified per
optimizer class (:data:`SECOND_MOMENT_KEYS`: each registry spec's ``second_moment_keys`` under the class it
builds, its ``state_class``), so "second moments saved vs Adam" is
``1 - held / numel`` where ``held`` is the number of elements in those tensors and ``numel`` the number of
parameter elements (Adam holds one per element):

    =========================== =============================================================================
    torch Adam / AdamW          ``exp_avg_sq`` (``max_exp_avg_sq`` with amsgrad is extra state, not V)
    SlimAdam, AdaLayer          ``exp_avg_sq`` at its reduced shape (K dims of size 1; AdaLayer 0-d)
    Adam-mini (adam-mini pkg)   ``vmean`` (one per head / neuron / token / block) and ``v`` (full, biases)
    torch.optim.Adafactor       ``row_var``, ``col_var`` (factored, >= 2-D) and ``variance`` (1-D)
    Adafactor (torch-optimizer, ``exp_avg_sq_row``, ``exp_avg_sq_col`` (factored) and ``exp_avg_sq``
    pytorch-optimizer), CAME    (unfactored); CAME's ``exp_avg_res_*`` (confidence) are extra, not V
    SM3                         ``accumulator_0`` .. ``accumulator_{d-1}`` (one vector per tensor dim)
    GaLore                      ``exp_avg_sq`` of the projected (rank-r) gradient
    SGD, Lion                   none: they keep no second moment (saved fraction 1.0)
    =========================== =============================================================================

Optimizers not in the table fall back to :data:`DEFAULT_SECOND_MOMENT_KEYS`, and the ledger says so.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from slimbench.registry import REGISTRY

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # pragma: no cover - no torch.distributed: nothing is sharded
    _DTensor = None

# Classes no registry entry builds that users pass to the ledger directly (pytorch-optimizer's own
# Adafactor and Adam-mini ports); registry classes are declared by their specs.
_UNREGISTERED_KEYS: dict[str, tuple[str, ...]] = {
    "pytorch_optimizer.AdaFactor": ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"),
    "pytorch_optimizer.AdamMini": ("vmean", "v"),
}
# Class (by root package and class name, matched along the MRO) -> glob patterns of second-moment keys.
SECOND_MOMENT_KEYS: dict[str, tuple[str, ...]] = {
    **_UNREGISTERED_KEYS,
    **{s.state_class: s.second_moment_keys for s in REGISTRY.values() if s.state_class is not None}}
DEFAULT_SECOND_MOMENT_KEYS: tuple[str, ...] = (
    "exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col", "v", "vmean", "row_var", "col_var", "variance",
    "accumulator_*")


def second_moment_keys(optimizer: torch.optim.Optimizer) -> tuple[tuple[str, ...], str]:
    """Second-moment key patterns for ``optimizer`` and where they came from (class name or 'default')."""
    for cls in type(optimizer).__mro__:
        key = f"{cls.__module__.split('.')[0]}.{cls.__name__}"
        if key in SECOND_MOMENT_KEYS:
            return SECOND_MOMENT_KEYS[key], key
    return DEFAULT_SECOND_MOMENT_KEYS, "default"


@dataclass(frozen=True)
class LedgerEntry:
    """One tensor held by the optimizer: whose state it is, under which key, and what it costs."""

    param: str  # parameter name, "param<i>" when unknown, "group<i>" for group-level entries
    key: str  # state key; nested entries read "projector.ortho_matrix", "buf[1]"
    shape: tuple[int, ...]
    dtype: str
    device: str
    numel: int
    bytes: int  # storage bytes charged to this entry (0 when ``shared``)
    second_moment: bool
    shared: bool = False  # its storage was already counted (another entry, or a parameter)
    placement: str = ""  # a DTensor's placements, e.g. "Shard(dim=0)"; "" for a plain tensor

    def to_dict(self) -> dict:
        return {"param": self.param, "key": self.key, "shape": list(self.shape), "dtype": self.dtype,
                "device": self.device, "numel": self.numel, "bytes": self.bytes,
                "second_moment": self.second_moment, "shared": self.shared,
                **({"placement": self.placement} if self.placement else {})}


@dataclass
class Ledger:
    """Everything an optimizer holds, with totals. Build with :func:`optimizer_ledger`."""

    optimizer: str  # class name
    entries: list[LedgerEntry]
    param_bytes: int  # unique storages of the optimized parameters
    param_numel: int
    n_params: int  # parameter tensors
    second_moment_keys: tuple[str, ...]
    second_moment_source: str  # class key in SECOND_MOMENT_KEYS, or "default"
    python_scalars: int = 0  # non-tensor numbers in state (0 bytes)
    devices: tuple[str, ...] = field(default=())

    @property
    def state_bytes(self) -> int:
        return sum(e.bytes for e in self.entries)

    @property
    def ratio(self) -> float:
        """State bytes as a multiple of parameter bytes (AdamW fp32: ~2.0)."""
        return self.state_bytes / self.param_bytes if self.param_bytes else float("nan")

    @property
    def second_moments(self) -> int:
        """Second-moment elements actually held (Adam: one per parameter element)."""
        return sum(e.numel for e in self.entries if e.second_moment)

    @property
    def second_moment_saved_fraction(self) -> float:
        """1 - held / numel: the fraction of Adam's second moments this optimizer does not keep."""
        return 1.0 - self.second_moments / self.param_numel if self.param_numel else float("nan")

    def by_key(self) -> dict[str, int]:
        """Bytes per state key (top-level key of nested entries)."""
        out: dict[str, int] = {}
        for e in self.entries:
            top = e.key.split(".")[0].split("[")[0]
            out[top] = out.get(top, 0) + e.bytes
        return out

    def by_param(self) -> dict[str, int]:
        """State bytes per parameter name."""
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.param] = out.get(e.param, 0) + e.bytes
        return out

    def totals(self) -> dict:
        return {"optimizer": self.optimizer, "state_bytes": self.state_bytes, "param_bytes": self.param_bytes,
                "ratio": self.ratio, "param_numel": self.param_numel, "n_params": self.n_params,
                "second_moments": self.second_moments,
                "second_moment_saved_fraction": self.second_moment_saved_fraction,
                "state_tensors": sum(1 for e in self.entries if not e.shared),
                "python_scalars": self.python_scalars, "by_key": self.by_key(),
                "second_moment_keys": list(self.second_moment_keys),
                "second_moment_source": self.second_moment_source, "devices": list(self.devices)}

    def to_dict(self) -> dict:
        return {**self.totals(), "entries": [e.to_dict() for e in self.entries]}


def _local(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor (what it holds in memory); a plain tensor itself."""
    return t._local_tensor if _is_dtensor(t) else t


def _is_dtensor(t: object) -> bool:
    return _DTensor is not None and isinstance(t, _DTensor)


def _placement(t: Tensor) -> str:
    return ",".join(str(p) for p in t.placements) if _is_dtensor(t) else ""


def storage_key(t: Tensor) -> int:
    """Identity of a tensor's storage (a DTensor's local shard); works on meta (every data_ptr is 0)."""
    return _local(t).untyped_storage()._cdata


def storage_bytes(t: Tensor) -> int:
    """Bytes of the storage behind ``t`` on this rank (a DTensor: its local shard's)."""
    return _local(t).untyped_storage().nbytes()


def _walk(obj: Any, path: str, seen_objs: set[int]) -> Iterable[tuple[str, Any]]:
    """Yield (path, leaf) for tensors and python numbers inside nested containers and plain objects."""
    if isinstance(obj, Tensor):
        yield path, obj
        return
    if isinstance(obj, (bool, int, float)):
        yield path, obj
        return
    if obj is None or isinstance(obj, (str, bytes, torch.dtype, torch.device)):
        return
    if id(obj) in seen_objs:  # cycles, and one object reached twice
        return
    seen_objs.add(id(obj))
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k), seen_objs)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]", seen_objs)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
        for k, v in vars(obj).items():
            yield from _walk(v, f"{path}.{k}", seen_objs)


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _param_names(optimizer: torch.optim.Optimizer, names: Mapping[str, Tensor] | nn.Module | None) -> dict[int, str]:
    by_id: dict[int, str] = {}
    if isinstance(names, nn.Module):
        names = dict(names.named_parameters())
    if names:
        by_id.update({id(p): n for n, p in names.items()})
    for group in optimizer.param_groups:
        group_names = group.get("param_names")
        if group_names is None and isinstance(group.get("name"), str) and len(group["params"]) == 1:
            group_names = [group["name"]]  # Adam-mini: one group per parameter, named
        if group_names:
            for p, n in zip(group["params"], group_names):
                by_id.setdefault(id(p), n)
    return by_id


def optimizer_ledger(optimizer: torch.optim.Optimizer, names: Mapping[str, Tensor] | nn.Module | None = None, *,
                     second_moment_keys_override: tuple[str, ...] | None = None) -> Ledger:
    """Measure everything ``optimizer`` holds.

    Args:
        optimizer: any torch.optim.Optimizer (state is read, never changed).
        names: a model or a ``{name: parameter}`` mapping for naming entries; names stored in the
            param groups (``param_names``, Adam-mini's ``name``) are used otherwise.
        second_moment_keys_override: glob patterns of second-moment keys, instead of the per-class table.
    """
    if second_moment_keys_override is not None:
        sm_keys, sm_source = tuple(second_moment_keys_override), "override"
    else:
        sm_keys, sm_source = second_moment_keys(optimizer)
    id_to_name = _param_names(optimizer, names)

    seen: set[int] = set()
    params: list[Tensor] = []
    param_bytes = param_numel = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if any(p is q for q in params):
                continue
            params.append(p)
            param_numel += _local(p).numel()
            k = storage_key(p)
            if k not in seen:
                seen.add(k)
                param_bytes += storage_bytes(p)
    index = {id(p): i for i, p in enumerate(params)}

    entries: list[LedgerEntry] = []
    scalars = 0
    devices: set[str] = set()

    def add(owner: str, state: Any) -> None:
        nonlocal scalars
        for path, leaf in _walk(state, "", set()):
            if not isinstance(leaf, Tensor):
                scalars += 1
                continue
            k = storage_key(leaf)
            shared = k in seen
            seen.add(k)
            top = path.split(".")[0].split("[")[0]
            devices.add(leaf.device.type)
            lt = _local(leaf)
            entries.append(LedgerEntry(owner, path, tuple(lt.shape), str(lt.dtype).removeprefix("torch."),
                                       str(lt.device), lt.numel(), 0 if shared else storage_bytes(leaf),
                                       _matches(top, sm_keys) and path == top, shared, _placement(leaf)))

    def owner_of(p: Any) -> str:
        return id_to_name.get(id(p)) or (f"param{index[id(p)]}" if id(p) in index else "<unknown>")

    for p in params:
        if p in optimizer.state:
            add(owner_of(p), optimizer.state[p])
    for key, state in optimizer.state.items():  # state keyed by something other than a parameter
        if not (isinstance(key, Tensor) and id(key) in index):
            add(str(key) if not isinstance(key, Tensor) else owner_of(key), state)
    for gi, group in enumerate(optimizer.param_groups):  # group-level tensors (a tensor lr, a shared step)
        extra = {k: v for k, v in group.items() if k not in ("params", "param_names") and isinstance(v, Tensor)}
        if extra:
            add(f"group{gi}", extra)
    return Ledger(type(optimizer).__name__, entries, param_bytes, param_numel, len(params), sm_keys, sm_source,
                  scalars, tuple(sorted(devices)))


def tensor_bytes(tensors: Iterable[Tensor | None]) -> int:
    """Bytes of the unique storages among ``tensors`` (None skipped): parameters, gradients, ..."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is None:
            continue
        k = storage_key(t)
        if k not in seen:
            seen.add(k)
            total += storage_bytes(t)
    return total
