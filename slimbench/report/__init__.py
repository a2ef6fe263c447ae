"""Reports and the regression gate over result files (sweeps, SNR / rules, benchmarks, profiles, audits).

    from slimbench.report import load, write_report, compare
    c = load(["results/runs/gpt-tiny-lr", "results/bench.json", "results/snr"])
    write_report(c, "results/report")                      # report.md + PNGs + report.json
    cmp = compare(load(["results/baseline"]), load(["/tmp/new"]), ["state_bytes:exact", "final_loss:5%"])
    cmp.failed, cmp.moved()

* :mod:`~slimbench.report.load`: read paths and folders, recognising each file by its ``format``.
* :mod:`~slimbench.report.table`: the table model and cell formats; :mod:`~slimbench.report.runs`: what
  makes runs comparable (task, optimizer labels, step ratio of a run).
* one module per section, its rows and columns together, each row with the files it came from:
  :mod:`~slimbench.report.memory`, :mod:`~slimbench.report.lr`, :mod:`~slimbench.report.steps`,
  :mod:`~slimbench.report.training`, :mod:`~slimbench.report.snr`, :mod:`~slimbench.report.step_time`,
  :mod:`~slimbench.report.environment`; :mod:`~slimbench.report.sections` puts them in order.
* :mod:`~slimbench.report.plots`: U-curves, loss curves, memory bars (matplotlib, Agg).
* :mod:`~slimbench.report.markdown`: ``report.md`` with numbered sources.
* :mod:`~slimbench.report.compare`: checks parsed from ``metric:threshold`` and the comparison.
"""
from slimbench.report.compare import (DEFAULT_CHECKS, Check, Comparison, Delta, DifferenceCheck, ExactCheck,
                                      PercentageCheck, compare, entries, parse_check)
from slimbench.report.load import Collection, Item, load
from slimbench.report.sections import build_sections
from slimbench.report.table import Options, Section, Table


def __getattr__(name: str):
    # markdown / plots import matplotlib (~0.5 s): loaded on first use, so `compare` stays light
    if name in ("write_report", "WrittenReport"):
        from slimbench.report import markdown

        return getattr(markdown, name)
    raise AttributeError(f"module 'slimbench.report' has no attribute {name!r}")


__all__ = ["load", "Collection", "Item", "write_report", "WrittenReport", "build_sections", "Options", "Section",
           "Table", "compare", "Comparison", "Delta", "Check", "ExactCheck", "PercentageCheck", "DifferenceCheck",
           "parse_check", "entries", "DEFAULT_CHECKS"]
