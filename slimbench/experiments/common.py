"""What several analyses read: best K and paper K per layer type, the report's rows under an experiment's labels.

The concepts are their owners': candidate K and "best K" are :mod:`slimbench.snr.derive`'s (its roles and
:func:`~slimbench.snr.derive.choose`), the paper's K per layer type is :data:`slimbench.layers.PAPER_DIMS`
(parsed by :func:`slimbench.layers.parse_dims`, as the rules parse it), loss-vs-lr and state bytes are
:mod:`slimbench.report`'s rows.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from slimbench.layers import PAPER_DIMS, parse_dims
from slimbench.report.load import Collection
from slimbench.report.lr import half_range, lr_rows
from slimbench.report.memory import memory_rows
from slimbench.report.runs import optimizer_label
from slimbench.snr.derive import ROLES, average_by_type, choose, mean_snr, role
from slimbench.snr.record import SNRRecord

# For (tokens, dim) tables and (vocab, dim) heads, role fan_in = dim 1 = the embedding dim (paper: "embed"),
# role fan_out = dim 0 = the token dim (paper: never compress).
ROLE_NAMES = {"fan_out": "K=(0,) fan_out", "fan_in": "K=(1,) fan_in", "both": "K=(0,1) both"}


def report_plots() -> ModuleType:
    """slimbench.report.plots, imported only when an experiment is analysed: matplotlib would cost every CLI
    start ~0.5 s (the CLI imports every subcommand)."""
    from slimbench.report import plots as _plots

    return _plots


def report_figures() -> ModuleType:
    """slimbench.report.figures (the report's section figures, one style for report and experiments),
    imported lazily for the reason of :func:`report_plots`."""
    from slimbench.report import figures as _figures

    return _figures


def pairs(drawn: Sequence[Any]) -> list[tuple[str, str]]:
    """The report's :class:`~slimbench.report.figures.Drawn` records as an analysis' (title, path) list."""
    return [(d.title, d.path) for d in drawn]


def display_names(c: Collection, rules_files: Sequence[Path] = ()) -> dict[str, str]:
    """Registry name -> how the report names the optimizer ("SlimAdam (SNR rules, cutoff 1.0)"), with the
    SNR rules files the runs used, so a legend never shows a rules hash."""
    from slimbench.report.load import load
    from slimbench.report.runs import display_name, rules_names

    files = [f for f in rules_files if f.exists()]
    rules = rules_names(load(files).rules) if files else {}
    return {i.data.config.optimizer: display_name(i.data, rules) for i in c.runs}


def best_role(per_role: Mapping[str, float]) -> tuple[str | None, float]:
    """The role with the highest SNR and that SNR ((None, -inf) when none is a number): the derive step's
    choice with no cutoff, ties to the role listed first in ROLES."""
    ordered = {r: per_role[r] for r in ROLES if r in per_role}
    k = choose(ordered, -math.inf)
    return k, (ordered[k] if k is not None else -math.inf)


def paper_roles(record: SNRRecord) -> dict[str, str | None]:
    """Layer type -> the role of the paper's K for it (None: the paper leaves it uncompressed): its
    :data:`~slimbench.layers.PAPER_DIMS` alias on a tracked parameter of that type, whose SNR shape is in
    (fan_out, fan_in...) order (so "embed", the last dim, is role fan_in)."""
    out: dict[str, str | None] = {}
    for p in record.tracked:
        if p.layer_type not in out and len(p.shape) >= 2:
            dims = parse_dims(PAPER_DIMS.get(p.layer_type), p.shape, p.layer_type)
            out[p.layer_type] = role(dims, len(p.shape)) if dims else None
    return out


def type_means(record: SNRRecord, skip_steps: int = 0) -> dict[str, dict[str, float]]:
    return average_by_type(mean_snr(record, skip_steps), record.params)


def depth(name: str) -> int | None:
    """The block index in a parameter name (``blocks.3.attn.q.weight`` -> 3)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def registry_names(c: Collection) -> dict[str, str]:
    """Report optimizer label (``slimadam[<rules fingerprint>]``) -> registry name, for tables whose note
    says which rules each sweep used."""
    return {optimizer_label(i.data): i.data.config.optimizer for i in c.runs}


def labelled_lr_rows(c: Collection, task: str, optimizer: str | None = None) -> list[dict]:
    """The report's loss-vs-lr rows of ``c`` under an experiment's labels: task ``task`` (pooling sweeps
    that differ in an override, e.g. SM3 without weight decay) and ``optimizer`` or the registry name."""
    names = registry_names(c)
    rows = lr_rows(c)
    for r in rows:
        r["task"], r["optimizer"] = task, optimizer or names[r["optimizer"]]
    return rows


def state_bytes(c: Collection) -> dict[str, int]:
    """Measured optimizer state bytes per optimizer (registry name), from the report's memory rows."""
    names = registry_names(c)
    return {names[r["optimizer"]]: r["state_bytes"] for r in memory_rows(c)
            if r["optimizer"] in names and r.get("state_bytes") is not None}


def final(c: Collection) -> tuple[float | None, float | None]:
    """(mean, half range) over seeds of the final loss of a sweep of one optimizer at one lr; (None, None)
    when it has no runs or a seed diverged."""
    rows = lr_rows(c)
    if len(rows) > 1:
        raise ValueError(f"expected runs of one optimizer at one lr, got {len(rows)} (optimizer, lr) cells")
    if not rows or rows[0]["diverged"]:
        return None, None
    return rows[0]["final_mean"], half_range(rows[0])


def gpt_deep(quick: bool) -> dict:
    """A 4-block gpt (2 in quick): enough depth to see per-depth SNR on a shared CPU."""
    return {"n_layer": 2, "n_head": 2, "d_model": 32} if quick else {"n_layer": 4, "n_head": 2, "d_model": 64}
