"""Training runs and learning-rate sweeps on the standard tasks, one versioned JSON result per run.

``runner.run(RunConfig)`` trains once and returns a :class:`RunResult`; ``sweep.run_sweep`` runs a grid,
resumably; ``results`` holds the file schema and its atomic reads and writes.
"""
from slimbench.bench.results import RUN_FORMAT, RUN_VERSION, RunConfig, RunResult, load_result, load_results, save_result
from slimbench.bench.runner import run
from slimbench.bench.sweep import RunOutcome, SweepConfig, best_lrs, commands, run_sweep, summary_rows

__all__ = ["RunConfig", "RunResult", "RunOutcome", "SweepConfig", "run", "run_sweep", "commands", "summary_rows",
           "best_lrs", "load_result", "load_results", "save_result", "RUN_FORMAT", "RUN_VERSION"]
