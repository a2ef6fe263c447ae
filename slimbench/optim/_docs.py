"""Docstring fragments for the implementation flags, written once and spliced into every optimizer's
docstring (as torch.optim's ``_foreach_doc`` / ``_fused_doc``), so the wording never drifts."""

FOREACH_DOC = """foreach: use the multi-tensor path (tensors grouped by device, dtype and K). None picks
            foreach on CPU/CUDA."""

FUSED_DOC = """fused: do each group's whole update in as few passes over memory as possible, through the
            first backend of ``slimbench.optim._fused.BACKENDS`` that takes each tensor: on CPU, fp32,
            fp64, bf16 and fp16 tensors go through a hand-written C/OpenMP kernel
            (:mod:`slimbench.optim._native`, built with the system C compiler on first use, well under a
            second; no transient memory); everything else (GPU, unusual K) is compiled per (device,
            dtype) bucket with ``torch.compile`` (:mod:`slimbench.optim._compiled`; a one-off compile of
            seconds to tens of seconds; lr schedules never recompile). Each falls back, with one
            warning, to the next (native -> compile -> foreach), never a crash. Tensors sharded across
            ranks whose K includes the sharded dim go through the native kernel with their sums
            all-reduced (one all-reduce per call; a K that is not a range of dims runs foreach, one
            warning). Cannot be combined
            with ``foreach=True``. Default None (off)."""

FUSED_BACKEND_DOC = """fused_backend: ``"auto"`` (the native CPU kernel where it applies, the Triton kernel for CUDA
            tensors when Triton imports, else torch.compile), ``"triton"`` (the Triton kernel only; on CPU
            only under ``TRITON_INTERPRET=1``) or ``"compile"`` (torch.compile only, e.g. to compare). Default
            ``"auto"``."""

MAXIMIZE_DOC = """maximize: maximize the objective instead of minimizing (default False)."""

SHARDED_DOC = """Sharded parameters (FSDP2's ``fully_shard``: DTensors on Shard(0)) and DDP work unchanged:
    see :mod:`slimbench.distributed` for where V lives and which K communicate."""

_FRAGMENTS = {"{foreach}": FOREACH_DOC, "{fused}": FUSED_DOC, "{fused_backend}": FUSED_BACKEND_DOC,
              "{maximize}": MAXIMIZE_DOC, "{sharded}": SHARDED_DOC}


def splice(doc: str | None) -> str | None:
    """``doc`` with each ``{flag}`` placeholder replaced by its fragment (a plain replace: docstrings full
    of LaTeX braces cannot go through str.format)."""
    if doc is None:  # python -OO strips docstrings
        return None
    for key, text in _FRAGMENTS.items():
        doc = doc.replace(key, text)
    return doc
