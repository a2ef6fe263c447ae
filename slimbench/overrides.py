"""The one ``--set KEY=VALUE`` grammar, and the check of overrides against a config's current values.

Values are JSON where they parse (``true``, ``3``, ``0.1``, ``null``, ``[1, 2]``), else strings; a key must
name a setting and a value must have that setting's type (ints are accepted for floats; a setting that is
None takes anything). Models (:mod:`slimbench.modelspec`) and tasks (:mod:`slimbench.tasks`) both check
their overrides here, so ``--set tie_head=False`` (a string, not JSON's ``false``) is an error everywhere
instead of a truthy string somewhere. Pure Python, below every module that takes overrides.
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any


def parse_value(raw: str) -> Any:
    """One ``--set`` value: JSON where it parses (true, 3, 0.1, null, [1, 2], "x"), else the string itself."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_sets(items: Sequence[str] | None, flag: str = "--set") -> dict[str, Any]:
    """``["n_layer=2", "activation_function=relu"]`` -> ``{"n_layer": 2, "activation_function": "relu"}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(raw.strip())
    return out


def did_you_mean(key: str, known: Sequence[str]) -> str:
    """'; did you mean a, b?' naming the closest of ``known`` to ``key`` ('' when none is close)."""
    near = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(near)}?" if near else ""


def check_overrides(owner: str, overrides: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides checked against the settings ``current`` (name -> present value); ints become floats.

    Raises a one-line ValueError for an unknown key (with the closest names) or a value of another type.
    """
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in current:
            raise ValueError(f"{owner} has no setting {key!r}{did_you_mean(key, sorted(current))}")
        now = current[key]
        ok = (now is None or value is None  # null: an explicit "unset", which configs commonly allow
              or (isinstance(now, bool) and isinstance(value, bool))
              or (isinstance(now, int) and not isinstance(now, bool) and isinstance(value, int)
                  and not isinstance(value, bool))
              or (isinstance(now, float) and isinstance(value, (int, float)) and not isinstance(value, bool))
              or (isinstance(now, str) and isinstance(value, str))
              or (isinstance(now, (list, tuple)) and isinstance(value, (list, tuple)))  # tuples: Python callers
              or (isinstance(now, dict) and isinstance(value, dict)))
        if not ok:
            raise ValueError(f"{owner}: {key} must be {type(now).__name__} like its current value {now!r}, "
                             f"got {value!r} ({type(value).__name__})")
        if isinstance(now, float) and isinstance(value, int):
            value = float(value)
        elif isinstance(now, tuple) and isinstance(value, (list, tuple)):
            value = tuple(value)
        out[key] = value
    return out
