"""The report's tables under their former single-module name (``slimbench.report.tables``).

The code lives in one module per section (:mod:`~slimbench.report.memory`, :mod:`~slimbench.report.lr`,
:mod:`~slimbench.report.steps`, :mod:`~slimbench.report.training`, :mod:`~slimbench.report.snr`,
:mod:`~slimbench.report.step_time`, :mod:`~slimbench.report.environment`), the table model in
:mod:`~slimbench.report.table`, run labels in :mod:`~slimbench.report.runs`, and :func:`build_sections`
in :mod:`~slimbench.report.sections`. This module only re-exports them for existing importers.
"""
from slimbench.report.environment import ENV_COLUMNS, environment_rows
from slimbench.report.lr import (LR_COLUMNS, LR_SUMMARY_COLUMNS, half_range, lr_grid_columns, lr_grid_rows, lr_key,
                                 lr_rows, lr_summary_rows)
from slimbench.report.memory import MEMORY_COLUMNS, memory_rows
from slimbench.report.runs import optimizer_label, task_label
from slimbench.report.sections import build_sections
from slimbench.report.snr import SNR_COLUMNS, snr_rows
from slimbench.report.step_time import (FUSED_COLUMNS, FUSED_TARGET_COLUMNS, STEP_COLUMNS, SWEEP_STEP_COLUMNS,
                                        fused_rows, fused_target_rows, step_time_rows, sweep_step_rows)
from slimbench.report.steps import default_steps, step_tables
from slimbench.report.table import MIB, Column, Options, Section, Table, format_value, table_from_lists
from slimbench.report.training import TRAINING_COLUMNS, training_rows

__all__ = ["ENV_COLUMNS", "FUSED_COLUMNS", "FUSED_TARGET_COLUMNS", "LR_COLUMNS", "LR_SUMMARY_COLUMNS", "MEMORY_COLUMNS",
           "MIB", "SNR_COLUMNS", "STEP_COLUMNS", "SWEEP_STEP_COLUMNS", "TRAINING_COLUMNS", "Column", "Options",
           "Section", "Table", "build_sections", "default_steps", "environment_rows", "format_value", "fused_rows",
           "fused_target_rows", "half_range", "lr_grid_columns", "lr_grid_rows", "lr_key", "lr_rows",
           "lr_summary_rows", "memory_rows", "optimizer_label", "snr_rows", "step_tables", "step_time_rows",
           "sweep_step_rows", "table_from_lists", "task_label", "training_rows"]
