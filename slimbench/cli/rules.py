"""`python -m slimbench rules snr.json --cutoff 1.0 [--depth-average] --out rules.json`: SNR -> SlimAdam rules.

Prints the rules table (layer, shape, SNR per candidate K, chosen K, second moments saved) and writes a
rules file that ``SlimAdam(model.named_parameters(), rules="rules.json")`` loads directly.

``--apply --model MODEL`` resolves rules against any model's parameters (a preset, hf:<model_type> or
package.module:factory, built on the meta device) and prints each parameter's K and V shape: the rules
just derived from SNR_JSON, or without it ``--rules`` (a rules file, default the paper's rules):

    python -m slimbench rules --apply --model hf:gpt2 --rules rules.json
    python -m slimbench rules snr.json --depth-average --apply --model hf:llama --set num_hidden_layers=2
"""
from __future__ import annotations

import argparse
from collections import Counter

from tabulate import tabulate

from slimbench.cli import snr as snr_cli
from slimbench.cli.snr import fmt_snr, parse_sets
from slimbench.layers import dims_label
from slimbench.modelspec import add_model_arguments, parse_sets as parse_model_sets, resolve_model
from slimbench.layouts import model_layouts
from slimbench.snr.derive import DEFAULT_CUTOFFS, ROLES, Derived, apply_rules, derive_rules, sweep_cutoffs
from slimbench.snr.record import load_snr


def _cutoffs(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"cutoffs must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one cutoff")
    return values


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("rules", help="derive SlimAdam rules (K per layer) from an SNR record",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("snr_file", metavar="SNR_JSON", nargs="?",
                   help="record written by `python -m slimbench snr` (optional with --apply)")
    p.add_argument("--cutoff", type=float, default=1.0, help="compress only where mean SNR > cutoff (default 1.0)")
    p.add_argument("--depth-average", action="store_true",
                   help="one rule per layer type from SNR averaged over its layers (transfers to other depths/"
                        "widths: the paper's SlimAdam-mean)")
    p.add_argument("--skip-steps", type=int, default=0, metavar="N",
                   help="ignore measurements at steps <= N (initial transient)")
    p.add_argument("--out", help="rules file to write (JSON); omit to only print")
    p.add_argument("--sweep-cutoffs", nargs="?", const=",".join(f"{c:g}" for c in DEFAULT_CUTOFFS),
                   type=_cutoffs, metavar="C1,C2,...",
                   help="also print the fraction of second moments saved vs the cutoff (default grid "
                        f"{','.join(f'{c:g}' for c in DEFAULT_CUTOFFS)})")
    p.add_argument("--apply-to", metavar="TASK", help="show which rule each parameter of TASK's model gets")
    p.add_argument("--apply-preset", default="tiny", metavar="PRESET", help="preset of --apply-to (default tiny)")
    p.add_argument("--apply-set", action="append", metavar="KEY=VALUE",
                   help="override a setting of the --apply-to task, e.g. n_layer=6 (repeatable)")
    p.add_argument("--apply", action="store_true",
                   help="resolve rules against --model's parameters and print each one's K and V shape")
    add_model_arguments(p, None)
    p.add_argument("--rules", metavar="RULES",
                   help="with --apply and no SNR_JSON: a rules file or 'paper' (default paper)")
    p.set_defaults(func=run)


def _shape_text(shapes: list[tuple[int, ...]]) -> str:
    counts = Counter(shapes)
    return ", ".join("x".join(map(str, s)) + (f" (x{n})" if n > 1 else "") for s, n in counts.items())


def rules_table(d: Derived) -> tuple[list[list], list[str]]:
    """Rows of the rules table, per parameter (by name) or per layer type (depth-averaged)."""
    headers = ["layer", "shape", *(f"SNR {r}" for r in ROLES), "K", "V saved"]
    rows = []
    if d.by == "layer_type":
        by_name = {r.name: r for r in d.rows}
        for t in d.types:
            members = [by_name[n] for n in t.layers]
            numel, saved = sum(r.numel for r in members), sum(r.saved for r in members)
            rows.append([f"{t.layer_type} ({len(members)})", _shape_text([r.shape for r in members]),
                         *(fmt_snr(t.snr.get(r)) for r in ROLES), t.choice or "none",
                         f"{100 * saved / numel:.1f}%" if numel else "-"])
    else:
        for r in d.rows:
            by_role = r.snr_by_role()
            rows.append([r.name, "x".join(map(str, r.shape)), *(fmt_snr(by_role.get(x)) for x in ROLES),
                         dims_label(r.dims, r.shape), f"{100 * r.saved / r.numel:.1f}%" if r.numel else "-"])
    return rows, headers


def _check_apply_args(args: argparse.Namespace) -> None:
    if args.apply and not args.model:
        raise ValueError("--apply needs --model MODEL (a preset, hf:<model_type> or package.module:factory)")
    if args.model and not args.apply:
        raise ValueError(f"--model {args.model} is what --apply resolves rules on: add --apply")
    if args.rules and not args.apply:
        raise ValueError("--rules is applied with --apply --model MODEL")
    if args.rules and args.snr_file:
        raise ValueError("give SNR_JSON (apply the rules derived from it) or --rules (apply a rules file), not both")
    if not args.snr_file and not args.apply:
        raise ValueError("give SNR_JSON to derive rules, or --apply --model MODEL [--rules FILE] to resolve rules")


def apply_to_model(args: argparse.Namespace, rules, check_record=None) -> None:
    """Print the K and V shape each parameter of ``--model`` gets from ``rules`` (built on meta)."""
    spec = resolve_model(args.model, parse_model_sets(args.model_set))
    model = spec.build("meta")
    named = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    if check_record is not None:
        check_record.check_model(named)
    applied = apply_rules(rules, named, layouts=model_layouts(model))
    print(f"{'rules ' + str(rules) if isinstance(rules, str) else 'the rules above'} applied to {spec.name}: "
          f"{len(named)} parameters, V saved {100 * applied.saved_fraction:.2f}%")
    print(tabulate([[r.assignment.name, "x".join(map(str, r.assignment.shape)), r.assignment.layer_type,
                     r.assignment.rule or "-", r.assignment.label,
                     "x".join(map(str, r.assignment.v_shape)), r.assignment.note]
                    for r in applied.rows],
                   headers=["parameter", "shape", "layer type", "rule", "K", "V shape", "note"],
                   disable_numparse=True))


def run(args: argparse.Namespace) -> int:
    if args.skip_steps < 0:
        raise ValueError(f"--skip-steps must be >= 0, got {args.skip_steps}")
    _check_apply_args(args)
    if not args.snr_file:
        apply_to_model(args, args.rules or "paper")
        return 0
    record = load_snr(args.snr_file)
    d = derive_rules(record, args.cutoff, depth_average=args.depth_average, skip_steps=args.skip_steps)
    rows, headers = rules_table(d)
    print(f"{args.snr_file}: {record.model.get('class', 'model')}, {len(record.tracked)} matrix parameters, "
          f"SNR averaged over {len(d.steps_used)} steps"
          + (f" after step {args.skip_steps}" if args.skip_steps else "") + f"; cutoff {args.cutoff:g}"
          + ("; depth-averaged by layer type" if args.depth_average else ""))
    print(tabulate(rows, headers=headers, disable_numparse=True))
    n_vec = len(d.untracked)
    print(f"second moments saved: {100 * d.saved_fraction:.1f}% ({d.saved_entries:,} of {d.total_entries:,} "
          f"entries; {n_vec} vector/untracked parameters stay uncompressed)")
    if args.sweep_cutoffs:
        points = sweep_cutoffs(record, args.sweep_cutoffs, depth_average=args.depth_average,
                               skip_steps=args.skip_steps)
        print()
        print(tabulate([[f"{p.cutoff:g}", f"{100 * p.saved_fraction:.1f}%", f"{p.compressed}/{p.tracked}"]
                        for p in points], headers=["cutoff", "V saved", "matrices compressed"],
                       disable_numparse=True))
    if args.apply_to:
        task = snr_cli.build_task(args.apply_to, args.apply_preset, 0, **parse_sets(args.apply_set))
        named = [(n, tuple(p.shape)) for n, p in task.model.named_parameters()]
        if d.by == "name":
            record.check_model(named)
        applied = apply_rules(d.ruleset(), named)
        print()
        print(f"applied to {args.apply_to}/{args.apply_preset}"
              + (f" ({', '.join(args.apply_set)})" if args.apply_set else "")
              + f": V saved {100 * applied.saved_fraction:.1f}%")
        print(tabulate([[r.assignment.name, "x".join(map(str, r.assignment.shape)), r.assignment.layer_type,
                         r.assignment.rule or "-", r.assignment.label] for r in applied.rows],
                       headers=["parameter", "shape", "layer type", "rule", "K"], disable_numparse=True))
    if args.apply:
        print()
        apply_to_model(args, d.ruleset(), record if d.by == "name" else None)
    if args.out:
        path = d.save(args.out)
        print(f"wrote {path}")
    return 0

