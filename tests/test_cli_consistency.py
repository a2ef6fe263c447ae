"""What subcommands share (issue 15): one typed ``--set`` grammar (slimbench.overrides) checked against the
task's model, one output flag, one thread default.

``--set``: ``--set tie_head=false`` must untie the gpt head in both subcommands, and a value of the wrong
type (``tie_head=False``, Python's spelling, which JSON reads as a string) is a one-line error, not a
truthy string that silently keeps the head tied.
"""
from __future__ import annotations

import json

import pytest

from slimbench.bench.sweep import DEFAULT_THREADS
from slimbench.cli import build_parser

from slimbench.cli import main
from slimbench.snr.record import load_snr

TINY = ["--task", "gpt", "--steps", "2", "--set", "n_layer=1", "--set", "d_model=16", "--no-progress"]


def test_run_set_false_unties_the_head(tmp_path):
    assert main(["run", *TINY, "--set", "tie_head=false", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    assert result["config"]["overrides"]["tie_head"] is False
    assert result["task"]["spec"]["model"]["tie_head"] is False


def test_snr_set_false_unties_the_head(tmp_path):
    out = tmp_path / "snr.json"
    assert main(["snr", *TINY, "--set", "tie_head=false", "--schedule", "every:1", "--out", str(out)]) == 0
    record = load_snr(out)
    assert record.run["task"]["spec"]["model"]["tie_head"] is False
    assert any(p.layer_type == "head" for p in record.tracked)  # an untied head is a parameter of its own


@pytest.mark.parametrize("command", ["run", "snr"])
@pytest.mark.parametrize("value", ["False", "no", "1"])
def test_wrongly_typed_model_setting_is_one_line_error(command, value, tmp_path, capsys):
    out = ["--out", str(tmp_path / ("snr.json" if command == "snr" else "runs"))]
    assert main([command, *TINY, "--set", f"tie_head={value}", *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tie_head must be bool like its current value True" in err[0], err
    assert not (tmp_path / "snr.json").exists() and not list(tmp_path.glob("runs/*.json"))


@pytest.mark.parametrize("command", ["run", "snr"])
def test_unknown_setting_names_the_task_and_its_settings(command, tmp_path, capsys):
    out = ["--out", str(tmp_path / ("snr.json" if command == "snr" else "runs"))]
    assert main([command, *TINY, "--set", "tie_heads=false", *out]) == 2
    err = capsys.readouterr().err
    assert "task 'gpt' has no setting 'tie_heads'" in err and "tie_head" in err


@pytest.mark.parametrize("flag", ["--out", "--output"])
@pytest.mark.parametrize("command", [["audit", "--model", "gpt2-tiny", "--optimizers", "adamw"]])
def test_out_is_the_output_flag_and_output_its_alias(command, flag, tmp_path, capsys):
    path = tmp_path / "a.json"
    assert main([*command, flag, str(path)]) == 0
    assert json.loads(path.read_text())


def test_run_and_experiment_default_to_the_same_threads():
    parser = build_parser()
    assert parser.parse_args(["run"]).threads == parser.parse_args(["experiment"]).threads == DEFAULT_THREADS
    assert parser.parse_args(["profile"]).out is None and parser.parse_args(["report"]).out == "report"


def _subcommands() -> dict:
    import argparse
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_file_writing_subcommand_spells_its_output_flag_out():
    """One name across subcommands: where a subcommand writes a file or folder the user names, the flag is
    ``--out``; older spellings (``--output``, compare's ``--json``) are aliases of the same destination."""
    writers = {}
    for name, sub in _subcommands().items():
        for a in sub._actions:
            if {"--out", "--output", "--json"} & set(a.option_strings):
                writers[name] = a
    assert {"audit", "compare", "coverage", "experiment", "profile", "report", "rules", "run", "snr"} <= set(writers)
    for name, a in writers.items():
        assert "--out" in a.option_strings and a.dest == "out", (name, a.option_strings, a.dest)
