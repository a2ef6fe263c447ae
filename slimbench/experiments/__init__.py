"""The paper's experiments as declarative recipes over slimbench's own commands (issue 6).

    from slimbench.experiments import run_experiment
    result = run_experiment("snr-by-layer", quick=True, out="results/experiments/snr-by-layer")

An experiment is a list of *steps* (:mod:`~slimbench.experiments.steps`: the library calls behind the snr,
rules and run commands, each printed as its command) plus an *analysis* that reads the files back and
returns tables, plots to draw and findings. :mod:`~slimbench.experiments.engine` runs the missing steps
(rerunning resumes; ``analyze_only=True`` builds tables from whatever exists) and
:mod:`~slimbench.experiments.output` writes ``summary.json``, ``tables.md`` and the PNG plots. One module
per experiment holds its plan and its analysis; nothing here prints.

Tables and plots are slimbench.report's: loss vs lr, best lr, lr robustness, state bytes, U-curves and loss
curves come from its rows and plot functions (the same numbers as ``python -m slimbench report`` on the
runs), and every table renders as report.md renders one. What is left to the experiments is what only an
experiment asks: which K each layer type prefers, gaps between rules choices, transfer between models.

Each recipe has two sizes: ``quick`` (tiny models and a few dozen steps, for CI) and ``full`` (all six ran in
about 43 minutes of compute on a shared 2-core CPU; see results/README.md for the commands and wall times).
Torch runs single-threaded by default (``threads=1``, :data:`slimbench.bench.sweep.DEFAULT_THREADS`, the
same default as ``run``): on 2 shared cores it was ~5x faster than 2 threads (measured: 200 gpt steps in
6.3 s vs 33.7 s while other jobs ran), and runs are deterministic per thread count.

Reference: Kalra, Kirchenbauer, Barkeshli, Goldstein (2025), "When Can You Get Away with Low Memory Adam?",
arXiv 2503.01843. Section numbers in the experiment modules refer to that paper.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from slimbench.experiments import headline, initialisation, lr_vs_snr, snr_by_layer, transfer, vocab
from slimbench.experiments.engine import (Analysis, Context, EventCallback, Experiment, ExperimentResult,
                                          StepRecord, plan_commands)
from slimbench.experiments.engine import run as _run
from slimbench.experiments.output import EXPERIMENTS_FORMAT, EXPERIMENTS_VERSION, write_outputs
from slimbench.experiments.steps import FixedRules, RulesStep, SNRStep, Step, SweepStep

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("snr-by-layer", "SNR by layer type and depth (gpt, small lr)",
               "Query/key compress along fan_in; value/output and MLP along fan_out; embedding/head along the "
               "embedding dim, never the token dim; norms uncompressed (paper Sec. 4-5).",
               snr_by_layer.plan_snr_by_layer, snr_by_layer.analyze_snr_by_layer),
    Experiment("lr-vs-snr", "Learning rate vs compressibility (gpt)",
               "Larger learning rates give lower SNR, i.e. less compressible second moments (paper Sec. 4).",
               lr_vs_snr.plan_lr_vs_snr, lr_vs_snr.analyze_lr_vs_snr),
    Experiment("vocab", "Vocabulary size vs token-dim compression (linear-lm, BPE)",
               "Compressing the embedding/head along the token dim hurts more as the vocabulary grows.",
               vocab.plan_vocab, vocab.analyze_vocab),
    Experiment("init", "Mitchell vs PyTorch default initialisation (gpt)",
               "Initialisation changes the SNR of the residual projections (attention output, MLP down).",
               initialisation.plan_init, initialisation.analyze_init),
    Experiment("headline", "lr sweeps of SlimAdam and low-memory baselines (gpt, cnn, finetune, vit)",
               "SlimAdam tracks Adam across learning rates; AdaLayer and Adam-mini degrade at Adam's optimal lr.",
               headline.plan_headline, headline.analyze_headline),
    Experiment("transfer", "Rules from a small proxy gpt applied to a wider, deeper gpt",
               "Depth-averaged rules from a small proxy transfer to larger models of the same family.",
               transfer.plan_transfer, transfer.analyze_transfer),
]}


def list_experiments() -> list[Experiment]:
    return list(EXPERIMENTS.values())


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def default_out(name: str, quick: bool) -> Path:
    return Path("results") / "experiments" / (f"{name}-quick" if quick else name)


def run_experiment(name: str, *, quick: bool = False, out: str | Path | None = None, analyze_only: bool = False,
                   threads: int | None = 1, on_step: Callable[[Step, str], None] | None = None,
                   on_event: EventCallback | None = None) -> ExperimentResult:
    """Run experiment ``name`` (its missing steps, in order), analyse its files, write its outputs.

    Args:
        name: see :data:`EXPERIMENTS`.
        quick: the CI-sized variant.
        out: folder (default ``results/experiments/NAME`` or ``NAME-quick``).
        analyze_only: compute nothing; tables from the files that exist (missing ones are listed).
        threads: torch threads during the steps (restored afterwards); None leaves torch's setting.
        on_step: called as ``on_step(step, "start" | "end")`` (progress).
        on_event: sweep progress callback (see :func:`slimbench.bench.run_sweep`).
    """
    exp = get_experiment(name)
    folder = Path(out) if out is not None else default_out(name, quick)
    result = _run(exp, folder, quick=quick, analyze_only=analyze_only, threads=threads, on_step=on_step,
                  on_event=on_event)
    result.files = write_outputs(result)
    return result


def plan(name: str, *, quick: bool = False, out: str | Path | None = None, threads: int | None = 1) -> list[str]:
    """Experiment ``name`` as the commands that make its files (``experiment NAME --plan``): running them
    in order after the experiment computes nothing new for its sweeps (the same run ids)."""
    exp = get_experiment(name)
    return plan_commands(exp, quick, Path(out) if out is not None else default_out(name, quick), threads)


__all__ = ["EXPERIMENTS", "EXPERIMENTS_FORMAT", "EXPERIMENTS_VERSION", "Analysis", "Context", "Experiment",
           "ExperimentResult", "FixedRules", "RulesStep", "SNRStep", "Step", "StepRecord", "SweepStep",
           "default_out", "get_experiment", "list_experiments", "plan", "run_experiment", "write_outputs"]
