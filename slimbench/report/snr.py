"""SNR section: mean SNR per layer type and candidate K, and the K the rules chose, per rules file (or per
SNR record given without its rules file).

The averaging and the choice are :mod:`slimbench.snr.derive`'s (``average_by_type``, ``derive_rules``,
``role``): a rules file's per-parameter SNRs are averaged over layers by the same function the rules
command uses, and a bare SNR record is turned into depth-averaged rules by ``derive_rules`` itself.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Any

from slimbench.report.load import Collection
from slimbench.report.table import Column
from slimbench.snr.derive import ROLES, average_by_type, derive_rules, role, role_dims
from slimbench.snr.record import ParamInfo
from slimbench.snr.stats import dims_key, key_dims


def _dims_keyed(snr: dict, ndim: int) -> dict[str, float]:
    """{dims key: snr} from a {dims key: snr} or a {role: snr} map (layer-type rules may store roles)."""
    out = {}
    for k, v in snr.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if k in ROLES:
            out[dims_key(role_dims(k, ndim))] = float(v)
            continue
        try:
            role(key_dims(k), ndim)
        except ValueError:
            continue
        out[k] = float(v)
    return out


def _role_label(dims: Any, ndim: int) -> str:
    if isinstance(dims, str):
        return dims
    if not dims:
        return "none"
    try:
        return role(tuple(int(d) for d in dims), ndim)
    except ValueError:
        return str(list(dims))


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _rules_file_rows(item) -> list[dict]:
    rs = item.data
    prov = rs.provenance or {}
    snr_file = prov.get("snr_file")
    commit = (prov.get("snr_provenance") or {}).get("commit") or prov.get("commit")
    origin = f"rules {rs.by}, cutoff {rs.cutoff if rs.cutoff is not None else '-'}"
    means: dict[str, dict[str, float]] = {}
    params: list[ParamInfo] = []
    chosen: dict[str, list[str]] = defaultdict(list)
    layers: dict[str, int] = defaultdict(int)
    for i, e in enumerate(rs.entries):
        if rs.by == "layer_type":
            t, ndim = e.get("match"), 2
            chosen[t].append(e.get("dims") if isinstance(e.get("dims"), str) else str(e.get("dims")))
            layers[t] += len(e.get("layers") or [])
        else:
            t = e.get("layer_type") or "?"
            ndim = len(e.get("shape") or [0, 0])
            chosen[t].append(_role_label(e.get("dims"), ndim))
            layers[t] += 1
        name = f"{i}:{e.get('match')}"
        means[name] = _dims_keyed(e.get("snr") or {}, ndim)
        params.append(ParamInfo(name, tuple(e.get("shape") or (1,) * ndim), t, True))
    averaged = average_by_type(means, params)
    rows = []
    for t in chosen:
        rows.append(_snr_row(t, averaged.get(t, {}), chosen[t], layers[t], origin, item.path, snr_file, commit))
    return rows


def snr_rows(c: Collection, cutoff: float = 1.0) -> list[dict]:
    """Per rules file (or SNR record without one) and layer type: mean SNR per role, chosen K, provenance."""
    rows: list[dict] = []
    used_snr: set[str] = set()
    for item in c.rules:
        snr_file = (item.data.provenance or {}).get("snr_file")
        if snr_file:  # by path, and by name for a report run from another folder than the rules command
            used_snr.update({_norm(snr_file), os.path.basename(snr_file)})
        rows.extend(_rules_file_rows(item))
    for item in c.snr:
        if _norm(item.path) in used_snr or os.path.basename(item.path) in used_snr:
            continue
        try:
            derived = derive_rules(item.data, cutoff, depth_average=True)
        except ValueError:
            continue
        commit = (item.data.provenance or {}).get("commit")
        for tr in derived.types:
            rows.append(_snr_row(tr.layer_type, tr.snr, [tr.choice or "none"], len(tr.layers),
                                 f"derived here (depth-averaged, cutoff {cutoff:g})", item.path, item.path, commit))
    return rows


def _snr_row(layer_type: str, snr: dict[str, float], chosen_list: list[str], n: int, origin: str, path: str,
             snr_file: str | None, commit: str | None) -> dict:
    counts: dict[str, int] = defaultdict(int)
    for ch in chosen_list:
        counts[ch] += 1
    chosen = ", ".join(k if len(counts) == 1 else f"{k} ({v})" for k, v in sorted(counts.items()))
    snr = {r: (None if v is None or math.isnan(v) else v) for r, v in snr.items()}
    sources = [path] + ([snr_file] if snr_file and _norm(snr_file) != _norm(path) else [])
    return {"layer_type": layer_type, "layers": n or None, "fan_out": snr.get("fan_out"),
            "fan_in": snr.get("fan_in"), "both": snr.get("both"), "chosen": chosen, "origin": origin,
            "commit": (commit or "")[:12] or None, "sources": sources}


SNR_COLUMNS = [Column("layer_type", "layer type"), Column("layers", "layers", "int"),
               Column("fan_out", "SNR fan_out", "f3"), Column("fan_in", "SNR fan_in", "f3"),
               Column("both", "SNR both", "f3"), Column("chosen", "chosen K"), Column("origin", "rules"),
               Column("commit", "commit")]
