"""`python -m slimbench audit`: optimizer-state memory of a model preset, on the meta device (no weights).

    python -m slimbench audit --model gpt2-small --optimizers adamw,slimadam,adalayer,adam-mini,adafactor
    python -m slimbench audit --model llama-3-8b --optimizers all --format json
    python -m slimbench audit --model gpt2-small-fused --optimizers slimadam --details
    python -m slimbench audit --model hf:gpt2 --optimizers adamw,slimadam --format json --details
    python -m slimbench audit --model hf:llama --set num_hidden_layers=2 --optimizers all
    python -m slimbench audit --model mypkg.models:build_net --set width=512
    python -m slimbench audit --model llama-3-8b --world-size 8      # per-rank state under FSDP2
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch
from tabulate import tabulate

from slimbench.io import write_json_atomic
from slimbench.memory.audit import DEFAULT_OPTIMIZERS, METHOD_META, METHOD_META_STUB, AuditResult, audit
from slimbench.tasks.presets import PRESETS
from slimbench.modelspec import add_model_arguments, parse_sets, resolve_model
from slimbench.registry import REGISTRY

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_METHOD_CODES = {METHOD_META: "meta", METHOD_META_STUB: "meta*"}


def human_bytes(n: float | None) -> str:
    """1536 -> '1.50 KiB' (binary units, as allocators count)."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def parse_optimizers(text: str) -> list[str]:
    """'adamw,slimadam' -> names; 'all' -> every registry entry."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        return list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown optimizer(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    if not names:
        raise ValueError("--optimizers is empty")
    return names


def world_size(text: str) -> int:
    """--world-size: an integer >= 1 (argparse turns the ValueError into a one-line usage error)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--world-size must be an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--world-size must be an integer >= 1, got {n}")
    return n


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("audit", help="optimizer-state memory of any model (meta device, no weights)",
                              description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="presets: " + ", ".join(PRESETS))
    add_model_arguments(p, "gpt2-small")
    p.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS),
                   help=f"comma-separated registry names or 'all' (default {','.join(DEFAULT_OPTIMIZERS)})")
    p.add_argument("--rules", metavar="PATH", help="SlimAdam rules file (default: the paper's rules)")
    p.add_argument("--dtype", choices=list(_DTYPES), default="float32", help="parameter dtype (default float32)")
    p.add_argument("--world-size", type=world_size, metavar="N",
                   help="also predict each rank's state bytes under FSDP2 (fully_shard) over N ranks")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--details", action="store_true",
                   help="also per-parameter SlimAdam intent vs reality and bytes per state key")
    p.add_argument("--out", "--output", dest="out", metavar="PATH",
                   help="also write the JSON result to PATH (--output: the old spelling)")
    p.set_defaults(func=run)


def _totals_table(res: AuditResult) -> str:
    rows = []
    for r in res.rows:
        if r.ledger is None:
            rows.append([r.optimizer, "-", "-", "-", "-", "-", "-", "skipped", r.reason])
            continue
        lg = r.ledger
        rows.append([r.optimizer, lg.state_bytes, human_bytes(lg.state_bytes), f"{lg.ratio:.4f}",
                     f"{r.vs_adamw:.4f}" if r.vs_adamw is not None else "-", f"{lg.second_moments:,}",
                     f"{lg.second_moment_saved_fraction:.4%}", _METHOD_CODES.get(r.method, r.method),
                     "; ".join(r.notes)])
    return tabulate(rows, headers=["optimizer", "state bytes", "state", "x params", "x AdamW", "2nd moments held",
                                   "2nd moments saved", "method", "notes"], disable_numparse=True)


def _intent_lines(res: AuditResult, details: bool) -> list[str]:
    if not res.intent:
        return []
    s = res.intent_summary()
    lines = [f"SlimAdam intent vs reality (rules: {res.rules}): {s['parameters']} parameters, "
             f"{s['compressed']} compressed as intended, {s['full_1d']} 1-D kept full (by design), "
             f"{len(s['fell_back'])} >= 2-D fell back to full Adam ({s['fell_back_numel']:,} elements), "
             f"{len(s['mismatches'])} mismatches"]
    if s["compressed_per_block"]:
        lines.append(f"  fused weights compressed per block ({len(s['compressed_per_block'])}): "
                     + ", ".join(s["compressed_per_block"][:4]) + (" ..." if len(s["compressed_per_block"]) > 4 else ""))
    if s["guessed_layouts"]:
        lines.append(f"  layouts assumed (out, in), module type unknown ({len(s['guessed_layouts'])}): "
                     + ", ".join(s["guessed_layouts"][:4]) + (" ..." if len(s["guessed_layouts"]) > 4 else ""))
    if s["fused_uncompressed"]:
        lines.append(f"  fused QKV weights left uncompressed ({len(s['fused_uncompressed'])}): "
                     + ", ".join(s["fused_uncompressed"][:4]) + (" ..." if len(s["fused_uncompressed"]) > 4 else ""))
    other = [n for n in s["fell_back"] if n not in s["fused_uncompressed"]]
    if other:
        lines.append(f"  other fallbacks ({len(other)}): " + ", ".join(other[:6]) + (" ..." if len(other) > 6 else ""))
    if s["mismatches"]:
        lines.append("  MISMATCH (state shape differs from the rule): " + ", ".join(s["mismatches"]))
    if details:
        rows = [[r.name, "x".join(map(str, r.shape)), r.layer_type, r.rule or "-", r.dims,
                 "x".join(map(str, r.intended_v_shape)),
                 "x".join(map(str, r.actual_v_shape)) if r.actual_v_shape is not None else "-", r.status,
                 r.layout, r.note] for r in res.intent]
        for r in res.intent:  # a fused weight's blocks, one row each, under it
            at = next(i for i, row in enumerate(rows) if row[0] == r.name)
            rows[at + 1:at + 1] = [[f"  [{b['role']}]", "x".join(map(str, b["shape"])), b["role"], b["rule"] or "-",
                                    b["label"], "x".join(map(str, b["v_shape"])), "", "", "", ""] for b in r.blocks]
        lines += ["", tabulate(rows, headers=["parameter", "shape", "layer type", "rule", "K", "V intended",
                                              "V held", "status", "layout", "note"], disable_numparse=True)]
    return lines


def _sharded_lines(res: AuditResult, details: bool) -> list[str]:
    """Per-rank state bytes under FSDP2, and which optimizers a test proves the arithmetic for."""
    n = res.world_size
    pr = res.param_bytes_per_rank
    lines = [f"FSDP2 over {n} ranks (fully_shard: every parameter Shard(0), torch.chunk rows, tail ranks smaller "
             f"or empty; arithmetic on the state above, nothing allocated): parameters per rank "
             f"{human_bytes(max(pr))} max, {human_bytes(min(pr))} min", ""]
    rows = []
    for r in res.rows:
        s = r.sharded
        if s is None:
            why = (f"refused: SlimAdam does not step sharded fused weights with blocks ({len(r.unshardable)}: "
                   + ", ".join(r.unshardable[:3]) + (" ..." if len(r.unshardable) > 3 else "") + ")"
                   if r.unshardable else "skipped")
            rows.append([r.optimizer, "-", "-", "-", "-", "-", "-", why])
            continue
        rows.append([r.optimizer, s.max, s.min, human_bytes(s.max), human_bytes(s.min), human_bytes(s.total),
                     human_bytes(s.replicated_bytes), "verified" if s.verified else "unverified prediction"])
    lines.append(tabulate(rows, headers=["optimizer", "max bytes/rank", "min bytes/rank", "max/rank", "min/rank",
                                         f"total ({n} ranks)",
                                         "replicated/rank", "per-rank numbers"], disable_numparse=True))
    ok = [r.optimizer for r in res.rows if r.sharded is not None and r.sharded.verified]
    guess = [r.optimizer for r in res.rows if r.sharded is not None and not r.sharded.verified]
    lines += ["", "replicated/rank = state every rank holds in full (0-d step counters, AdaLayer's V, SlimAdam's V "
              "where K includes the sharded dim 0); total = sum over ranks.",
              "verified (registry sharded=True; tests/test_distributed.py measures the per-rank ledger under FSDP2 "
              "and requires 0 bytes of difference): " + (", ".join(ok) or "none of these")]
    if guess:
        lines.append("UNVERIFIED predictions (never run under FSDP2 by the tests; assumes state shaped like or "
                     "indexed by a parameter's rows is sharded with it): " + ", ".join(guess))
    if details:
        lines += [""] + [f"{r.optimizer}: bytes per rank: " + ", ".join(map(str, r.sharded.per_rank))
                         for r in res.rows if r.sharded is not None]
    return lines


def render_table(res: AuditResult, details: bool = False) -> str:
    """The audit as text: header, totals table, legend, SlimAdam intent, optional details."""
    out = [f"model {res.model}: {res.param_numel:,} parameters, {human_bytes(res.param_bytes)} of {res.dtype} "
           f"weights (not allocated: meta device); audit took {res.seconds:.2f} s", "", _totals_table(res), "",
           "x params = state bytes / parameter bytes; x AdamW = state bytes / AdamW's on this model; "
           "2nd moments saved = 1 - held / parameter elements (ledger docstring lists the keys per optimizer).",
           f"method: meta = {METHOD_META}; meta* = {METHOD_META_STUB}."]
    if res.world_size:
        out += [""] + _sharded_lines(res, details)
    intent = _intent_lines(res, details)
    if intent:
        out += [""] + intent
    if details:
        for r in res.rows:
            if r.ledger is not None:
                out += ["", f"{r.optimizer}: bytes per state key: " + ", ".join(
                    f"{k}={human_bytes(v)}" for k, v in r.ledger.by_key().items())]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    names = parse_optimizers(args.optimizers)
    spec = resolve_model(args.model, parse_sets(args.model_set))
    if spec.kind == "preset" and not spec.overrides:
        res = audit(args.model, names, rules=args.rules, dtype=_DTYPES[args.dtype], world_size=args.world_size)
    else:  # built here on meta, once; the audit reuses it (meta tensors hold no values to disturb)
        res = dataclasses.replace(audit(spec.build("meta"), names, rules=args.rules, dtype=_DTYPES[args.dtype],
                                        world_size=args.world_size),
                                  model=spec.name, model_info=spec.info)
    obj = res.to_dict(details=args.details)
    if args.out:
        write_json_atomic(args.out, obj)
    if args.format == "json":
        print(json.dumps(obj, indent=1))
    else:
        print(render_table(res, args.details))
    return 0
