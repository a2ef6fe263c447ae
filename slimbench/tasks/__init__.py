"""Standard tasks on real, offline data: ``build_task(name, preset, seed, **overrides)``.

Tasks: gpt, linear-lm, vit, cnn, finetune, digits (see :data:`slimbench.tasks.specs.TASKS`). Data comes
from :mod:`slimbench.tasks.data` (fetch the text corpora once with ``python -m slimbench data fetch``),
models from :mod:`slimbench.tasks.models`.
"""
from slimbench.tasks.data import DataUnavailable
from slimbench.tasks.specs import TASKS, Task, TaskSpec, build_task, get_spec, list_tasks

__all__ = ["build_task", "get_spec", "list_tasks", "Task", "TaskSpec", "TASKS", "DataUnavailable"]
