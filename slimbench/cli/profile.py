"""`python -m slimbench profile`: peak memory of a real training step per optimizer, split into params,
grads, optimizer state and the transient of step(), checked against each optimizer's transient budget.

    python -m slimbench profile --model gpt2-tiny --optimizers adamw,slimadam,adalayer --foreach
    python -m slimbench profile --model gpt2-small --device cuda --snapshot-dir results/snapshots
    python -m slimbench profile --model hf:llama --set num_hidden_layers=2 --set hidden_size=256

Any token model works (forward(token ids) -> next-token logits): presets, hf:<causal or masked LM>, or a
package.module:factory whose model returns (batch, time, vocab) logits; batches are random token ids.
"""
from __future__ import annotations

import argparse
import json

import torch

from tabulate import tabulate

from slimbench.cli.audit import _DTYPES, human_bytes, parse_optimizers
from slimbench.io import write_json_atomic
from slimbench.tasks.presets import PRESETS
from slimbench.memory.profile import ProfileResult, profile
from slimbench.modelspec import add_model_arguments, parse_sets, resolve_model


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("profile", help="peak and step-transient memory of a training step per optimizer",
                              description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="presets: " + ", ".join(PRESETS) + ". Profiles allocate real weights.")
    add_model_arguments(p, "gpt2-tiny")
    p.add_argument("--optimizers", default="adamw,slimadam,adalayer",
                   help="comma-separated registry names or 'all' (default adamw,slimadam,adalayer)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--dtype", choices=list(_DTYPES), default="float32")
    fe = p.add_mutually_exclusive_group()
    fe.add_argument("--foreach", dest="foreach", action="store_true", default=None,
                    help="foreach=True where supported")
    fe.add_argument("--no-foreach", dest="foreach", action="store_false", help="foreach=False where supported")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2, help="full steps before measuring (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snapshot-dir", metavar="DIR", help="CUDA: write a memory snapshot per optimizer here")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--out", "--output", dest="out", metavar="PATH",
                   help="also write the JSON result to PATH (--output: the old spelling)")
    p.set_defaults(func=run)


def render_table(res: ProfileResult) -> str:
    rows = []
    for r in res.rows:
        if r.status != "ok":
            rows.append([r.optimizer, "-", "-", "-", "-", "-", "-", "-", "skipped: " + r.reason])
            continue
        rows.append([r.optimizer, human_bytes(r.param_bytes), human_bytes(r.grad_bytes), human_bytes(r.state_bytes),
                     human_bytes(r.fwd_bwd_bytes), human_bytes(r.transient_bytes), human_bytes(r.peak_bytes),
                     f"{human_bytes(r.budget_bytes)} {'ok' if r.within_budget else 'OVER'}",
                     "" if r.foreach is None else f"foreach={r.foreach}"])
    methods = sorted({r.method for r in res.rows if r.method})
    return "\n".join([
        f"model {res.model} on {res.device} ({res.dtype}), batch {res.batch_size} x {res.seq_len} tokens, "
        f"measured after {res.warmup} warm-up steps", "",
        tabulate(rows, headers=["optimizer", "params", "grads", "state", "fwd+bwd", "step transient", "peak",
                                "transient budget", "notes"], disable_numparse=True), "",
        "peak = params + state + the most new memory alive during forward, backward and step.",
        *(f"method: {m}" for m in methods)])


def _check_sizes(args: argparse.Namespace) -> None:
    """Bad sizes or device: one line before any model is built (torch would accept 0 or raise a RuntimeError)."""
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--seq-len", args.seq_len, 1),
                             ("--warmup", args.warmup, 0)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    try:
        torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None


def run(args: argparse.Namespace) -> int:
    _check_sizes(args)
    names = parse_optimizers(args.optimizers)
    model = resolve_model(args.model, parse_sets(args.model_set))
    res = profile(model, names, device=args.device, dtype=_DTYPES[args.dtype], foreach=args.foreach,
                  batch_size=args.batch_size, seq_len=args.seq_len, warmup=args.warmup, seed=args.seed,
                  snapshot_dir=args.snapshot_dir)
    obj = res.to_dict()
    if args.out:
        write_json_atomic(args.out, obj)
    print(json.dumps(obj, indent=1) if args.format == "json" else render_table(res))
    return 0 if all(r.within_budget is not False for r in res.rows) else 1
