"""Every report section in order, each built by its own module: memory, loss vs lr, comparisons (with
intervals), loss vs step, the training suite, SNR, step time, environment. A section without data says what would fill it."""
from __future__ import annotations

from slimbench.report.claims import CLAIM_COLUMNS, claim_rows, claims_note
from slimbench.report.environment import ENV_COLUMNS, environment_rows
from slimbench.report.load import Collection
from slimbench.report.lr import LR_COLUMNS, LR_SUMMARY_COLUMNS, lr_rows, lr_summary_rows
from slimbench.report.memory import MEMORY_COLUMNS, memory_rows
from slimbench.report.snr import SNR_COLUMNS, snr_rows
from slimbench.report.step_time import (FUSED_COLUMNS, FUSED_TARGET_COLUMNS, STEP_COLUMNS, SWEEP_STEP_COLUMNS,
                                        fused_rows, fused_target_rows, step_time_rows, sweep_step_rows)
from slimbench.report.steps import step_tables
from slimbench.report.table import Options, Section, Table
from slimbench.report.training import TRAINING_COLUMNS, training_rows


def build_sections(c: Collection, opts: Options = Options()) -> list[Section]:
    """Every report section that has data (a section without data says what would fill it)."""
    secs = []
    mem = memory_rows(c)
    secs.append(Section("memory", "Memory", [Table("Optimizer state and step memory", MEMORY_COLUMNS, mem,
                        "state: the ledger's measured bytes; x params: state / parameter bytes; V saved: share of "
                        "Adam's second moments not held; peak: params + grads + state + step transient")] if mem else [],
                        "" if mem else "No step benchmarks, profiles, audits or sweep runs given."))
    lrs = lr_rows(c, opts)
    summary = lr_summary_rows(lrs, opts)
    secs.append(Section("lr", "Loss vs learning rate", [
        Table("Best learning rate and robustness", LR_SUMMARY_COLUMNS, summary,
              f"robustness: contiguous lrs around the best whose mean {opts.loss} is within "
              f"{100 * opts.within:g}% of the best, none diverged; width = hi / lo"),
        Table("Final loss per learning rate", LR_COLUMNS, lrs,
              f"{opts.loss} over seeds that finished; 'diverged k/n': k of n seeds diverged")] if lrs else [],
        "" if lrs else "No sweep results given (python -m slimbench run ...)."))
    claims = [r for r in claim_rows(c, opts) if r["seeds"] > 1 or r["lrs"] > 1]
    if claims:
        secs.append(Section("claims", "Comparisons with their uncertainty",
                            [Table("Gap to AdamW, best lr and lr band, over seeds", CLAIM_COLUMNS, claims,
                                   claims_note(opts))]))
    steps = step_tables(c, opts)
    secs.append(Section("steps", "Loss vs step", steps, "" if steps else "No sweep results given."))
    train = training_rows(c)
    if train:
        secs.append(Section("training", "Short training runs (pytest suites)",
                            [Table("Training suite", TRAINING_COLUMNS, train)]))
    snr = snr_rows(c)
    secs.append(Section("snr", "SNR per layer type", [Table("Mean SNR per candidate K and the chosen K", SNR_COLUMNS, snr,
                        "SNR averaged over the measured steps and over the layers of each type; chosen K from "
                        "the rules file (with its cutoff) or derived here")] if snr else [],
                        "" if snr else "No SNR records or rules files given (python -m slimbench snr / rules)."))
    st, fused, sweep = step_time_rows(c), fused_rows(c), sweep_step_rows(c)
    tables = []
    if st:
        tables.append(Table("Optimizer step (pytest suites)", STEP_COLUMNS, st,
                            "one steady-state step; AdamW(foreach) timed in the same test between rounds; "
                            "the adamw row's ratio shows the session's noise"))
    if fused:
        tables.append(Table("Fused / foreach kernels (pytest suites)", FUSED_COLUMNS, fused,
                            "interleaved rounds, minimum per path; effective GB/s = the step's minimal traffic "
                            "(B/param: AdamW 7 bytes-of-dtype per parameter, SlimAdam 5 plus its reduced V) over its time; "
                            "of copy = that over a dst.copy_(src) of as many bytes timed in the same rounds"))
        tables.append(Table("Fused kernel targets (issue 7)", FUSED_TARGET_COLUMNS, fused_target_rows(c),
                            "targets are reported, never asserted: fused SlimAdam <= 1.0x fused AdamW, foreach "
                            "SlimAdam <= 0.75x foreach AdamW, transient no larger than AdamW's"))
    if sweep:
        tables.append(Table("Training step in sweeps", SWEEP_STEP_COLUMNS, sweep,
                            "batch + forward + backward + step; noisy on shared cores"))
    secs.append(Section("step_time", "Step time", tables, "" if tables else "No benchmark JSON or sweep results given."))
    env = environment_rows(c)
    secs.append(Section("environment", "Environment", [Table("Where the numbers were measured", ENV_COLUMNS, env)]
                        if env else []))
    return secs
