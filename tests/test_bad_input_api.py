"""Bad input as data (issue 12), library side: each row is one bad call and the exception it must raise.

Rows cover run configs and sweeps, every file kind's loader (versioned JSON, run results, rules, SNR
records, report folders), rules given as dicts, registry and SlimAdam construction, compare checks and
scale-out commands. Each row names the exception type and a regex its message must match; one message is
one line. A hypothesis fuzz test at the end throws random rules documents and random result files at the
loaders and the report/compare pipeline and accepts only the documented exception types.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimbench.bench import sweep as sw
from slimbench.bench.results import RunConfig, RunResult, load_result, load_results
from slimbench.io import FormatError, read_json, read_versioned
from slimbench.registry import build_optimizer
from slimbench.report import load
from slimbench.report.compare import compare, parse_check
from slimbench.report.sections import build_sections
from slimbench.report.table import Options
from slimbench.rules import load_rules, resolve
from slimbench.snr.record import load_snr
from slimbench.snr.tracker import Schedule
from synthetic_results import make_run


def _write(folder: Path, name: str, content) -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


RULES = {"format": "slimbench.rules", "version": 1}
SNR = {"format": "slimbench.snr", "version": 1}


def _run_with(field: str, value) -> dict:
    d = make_run().to_dict()
    if value is KeyError:
        del d[field]
    else:
        d[field] = value
    return d


def _cfg_with(field: str, value) -> dict:
    d = make_run().to_dict()
    d["config"][field] = value
    return d


class _Lin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)


SHAPES = [("fc.weight", (4, 8)), ("fc.bias", (4,))]
VE = ValueError

# (id, call(folder) -> anything, exception type, message regex)
CASES: list[tuple[str, object, type, str]] = [
    # RunConfig: every field's type and range
    ("cfg-lr-negative", lambda d: RunConfig("gpt", "adamw", -1.0), VE, r"lr must be a finite number >= 0, got -1.0"),
    ("cfg-lr-nan", lambda d: RunConfig("gpt", "adamw", math.nan), VE, r"lr must be a finite number"),
    ("cfg-lr-inf", lambda d: RunConfig("gpt", "adamw", math.inf), VE, r"lr must be a finite number"),
    ("cfg-lr-str", lambda d: RunConfig("gpt", "adamw", "fast"), VE, r"lr must be a finite number.*'fast'"),
    ("cfg-lr-bool", lambda d: RunConfig("gpt", "adamw", True), VE, r"lr must be a finite number.*True"),
    ("cfg-lr-none", lambda d: RunConfig("gpt", "adamw", None), VE, r"lr must be a finite number.*None"),
    ("cfg-lr-list", lambda d: RunConfig("gpt", "adamw", [1e-3]), VE, r"lr must be a finite number"),
    ("cfg-seed-negative", lambda d: RunConfig("gpt", "adamw", 1e-3, seed=-1), VE, r"seed must be an int >= 0"),
    ("cfg-seed-float", lambda d: RunConfig("gpt", "adamw", 1e-3, seed=1.5), VE, r"seed must be an int >= 0, got 1.5"),
    ("cfg-seed-bool", lambda d: RunConfig("gpt", "adamw", 1e-3, seed=True), VE, r"seed must be an int"),
    ("cfg-seed-str", lambda d: RunConfig("gpt", "adamw", 1e-3, seed="0"), VE, r"seed must be an int"),
    ("cfg-task-empty", lambda d: RunConfig("", "adamw", 1e-3), VE, r"task and optimizer must be non-empty"),
    ("cfg-optimizer-empty", lambda d: RunConfig("gpt", "", 1e-3), VE, r"task and optimizer must be non-empty"),
    ("cfg-task-int", lambda d: RunConfig(5, "adamw", 1e-3), VE, r"task must be a name \(a string\), got 5"),
    ("cfg-optimizer-list", lambda d: RunConfig("gpt", ["adamw"], 1e-3), VE, r"optimizer must be a name"),
    ("cfg-preset-none", lambda d: RunConfig("gpt", "adamw", 1e-3, preset=None), VE, r"preset must be a name"),
    ("cfg-rules-int", lambda d: RunConfig("gpt", "slimadam", 1e-3, rules=5), VE, r"rules must be None, 'paper'"),
    ("cfg-rules-dict", lambda d: RunConfig("gpt", "slimadam", 1e-3, rules={"a": [0]}), VE, r"rules must be None"),
    ("cfg-overrides-list", lambda d: RunConfig("gpt", "adamw", 1e-3, overrides=[1]), VE, r"overrides must be a mapping"),
    ("cfg-overrides-int-key", lambda d: RunConfig("gpt", "adamw", 1e-3, overrides={1: 2}), VE,
     r"overrides must be a mapping of setting names"),
    ("cfg-divfactor-one", lambda d: RunConfig("gpt", "adamw", 1e-3, divergence_factor=1.0), VE,
     r"divergence_factor must be > 1"),
    ("cfg-divfactor-nan", lambda d: RunConfig("gpt", "adamw", 1e-3, divergence_factor=math.nan), VE,
     r"divergence_factor must be > 1"),
    ("cfg-divfactor-str", lambda d: RunConfig("gpt", "adamw", 1e-3, divergence_factor="3"), VE,
     r"divergence_factor must be a number"),
    ("cfg-divfactor-bool", lambda d: RunConfig("gpt", "adamw", 1e-3, divergence_factor=True), VE,
     r"divergence_factor must be a number"),
    ("cfg-from-dict-missing-lr", lambda d: RunConfig.from_dict({"task": "gpt", "optimizer": "adamw"}), TypeError,
     r"lr"),
    # SweepConfig
    ("sweep-no-optimizers", lambda d: sw.SweepConfig("digits", (), (1e-3,)), VE, r"optimizers is empty"),
    ("sweep-no-lrs", lambda d: sw.SweepConfig("digits", ("adamw",), ()), VE, r"lrs is empty"),
    ("sweep-no-seeds", lambda d: sw.SweepConfig("digits", ("adamw",), (1e-3,), seeds=()), VE, r"seeds is empty"),
    ("sweep-repeat-lr", lambda d: sw.SweepConfig("digits", ("adamw",), (1e-3, 1e-3)), VE, r"lrs repeats a value"),
    ("sweep-repeat-opt", lambda d: sw.SweepConfig("digits", ("adamw", "adamw"), (1e-3,)), VE,
     r"optimizers repeats a value"),
    ("sweep-unknown-task", lambda d: sw.SweepConfig("imagenet", ("adamw",), (1e-3,)), VE, r"unknown task 'imagenet'"),
    ("sweep-unknown-setting", lambda d: sw.SweepConfig("digits", ("adamw",), (1e-3,), overrides={"depth": 3}), VE,
     r"has no setting"),
    ("sweep-unknown-optimizer", lambda d: sw.SweepConfig("digits", ("adamx",), (1e-3,)), VE,
     r"unknown optimizer 'adamx'"),
    ("sweep-rules-unused", lambda d: sw.SweepConfig("digits", ("adamw",), (1e-3,), rules="paper"), VE,
     r"none of adamw takes rules"),
    ("sweep-negative-lr", lambda d: sw.SweepConfig("digits", ("adamw",), (-1e-3,)).runs(), VE,
     r"lr must be a finite number"),
    ("sweep-unknown-executor", lambda d: sw.run_sweep([], d / "x", executor="ray"), VE, r"unknown executor 'ray'"),
    ("sweep-preflight-bad-rules", lambda d: sw.preflight(sw.SweepConfig(
        "digits", ("slimadam",), (1e-3,), rules=str(_write(d, "r_nomatch.json", {
            **RULES, "rules": [{"match": "no.such", "dims": [0]}]})), overrides={"steps": 2}).runs()), VE,
     r"slimadam \(lr 0.001, rules .*no.such.* matches no parameter"),
    ("commands-threads-zero", lambda d: sw.commands([], d, threads=0), VE, r"threads must be an int >= 1"),
    ("commands-threads-str", lambda d: sw.commands([], d, threads="2"), VE, r"threads must be an int >= 1"),
    ("commands-newline-out", lambda d: sw.commands([RunConfig("digits", "adamw", 1e-3)], d / "a\nb", threads=1), VE,
     r"line break"),
    ("commands-nul-out", lambda d: sw.commands([RunConfig("digits", "adamw", 1e-3)], "a\0b", threads=1), VE,
     r"line break or NUL"),
    # io: any versioned JSON file
    ("io-missing", lambda d: read_versioned(d / "nope.json", "slimbench.run", 1), FormatError, r"nope.json: no such file"),
    ("io-folder", lambda d: read_json(d), FormatError, r"no such file"),
    ("io-not-json", lambda d: read_json(_write(d, "a.json", "{x")), FormatError, r"a.json: not valid JSON"),
    ("io-empty", lambda d: read_json(_write(d, "b.json", "")), FormatError, r"not valid JSON"),
    ("io-binary", lambda d: read_json(_write(d, "c.json", b"\xff\xfe")), FormatError, r"not a UTF-8 text file"),
    ("io-dup-top", lambda d: read_json(_write(d, "e.json", '{"a": 1, "a": 2}')), FormatError, r"duplicate key 'a'"),
    ("io-dup-deep", lambda d: read_json(_write(d, "f.json", '[{"x": {"b": 1, "b": 1}}]')), FormatError,
     r"duplicate key 'b'"),
    ("io-deep", lambda d: read_json(_write(d, "g.json", "[" * 200_000 + "]" * 200_000)), FormatError, r"g.json"),
    ("io-too-big", lambda d: read_json(_write(d, "h.json", "[" + "0," * 600 + "0]"), max_bytes=1000), FormatError,
     r"larger than slimbench reads"),
    ("io-no-format", lambda d: read_versioned(_write(d, "i.json", {"x": 1}), "slimbench.run", 1), FormatError,
     r"not a slimbench file \(no 'format' field\)"),
    ("io-list", lambda d: read_versioned(_write(d, "j.json", [1]), "slimbench.run", 1), FormatError,
     r"not a slimbench file"),
    ("io-wrong-format", lambda d: read_versioned(_write(d, "k.json", RULES), "slimbench.run", 1), FormatError,
     r"is a 'slimbench.rules' file, expected a 'slimbench.run' file"),
    *[(f"io-version-{name}", (lambda v: lambda d: read_versioned(
        _write(d, f"v_{id(v)}.json", {"format": "slimbench.run", "version": v}), "slimbench.run", 1))(v),
       FormatError, r"positive integer 'version'")
      for name, v in (("true", True), ("false", False), ("zero", 0), ("negative", -3), ("float", 1.0),
                      ("str", "1"), ("null", None), ("list", [1]))],
    ("io-version-newer", lambda d: read_versioned(_write(d, "l.json", {"format": "slimbench.run", "version": 2}),
                                                  "slimbench.run", 1), FormatError, r"version 2 is newer"),
    # run result files: the one schema check (slimbench/bench/results.py)
    *[(f"result-{field}-{tag}", (lambda f, v, t: lambda d: load_result(_write(d, f"run_{f}_{t}.json", _run_with(f, v))))(
        field, value, tag), FormatError, rf"missing or bad field: field '{field}' (must be|is missing)")
      for field, value, tag in (
          ("train_loss", ["x"], "str"), ("train_loss", None, "null"), ("train_loss", KeyError, "absent"),
          ("val", [{"step": 1.5, "loss": 2.0}], "float-step"), ("val", [{"loss": 2.0}], "no-step"),
          ("val", [3], "int"), ("grad_norm", [[1.0]], "nested"), ("lr", [None], "null-item"),
          ("step_time_s", "fast", "str"), ("step_time_s", [False], "bool"), ("status", "done", "unknown"),
          ("status", KeyError, "absent"), ("memory", {"state_bytes": 1.5}, "float-bytes"),
          ("memory", {"param_bytes": "1"}, "str-bytes"), ("memory", [], "list"), ("optimizer", "adamw", "str"),
          ("task", None, "null"), ("env", 3, "int"), ("wall_time_s", None, "null"), ("wall_time_s", True, "bool"),
          ("started_at", 0, "int"), ("divergence", {"step": "5"}, "str-step"), ("divergence", [1], "list"),
          ("config", "gpt", "str"))],
    ("result-config-lr", lambda d: load_result(_write(d, "rc1.json", _cfg_with("lr", "x"))), FormatError,
     r"lr must be a finite number"),
    ("result-config-seed", lambda d: load_result(_write(d, "rc2.json", _cfg_with("seed", -2))), FormatError,
     r"seed must be an int >= 0"),
    ("result-config-task", lambda d: load_result(_write(d, "rc3.json", _cfg_with("task", 7))), FormatError,
     r"task must be a name"),
    ("result-config-rules", lambda d: load_result(_write(d, "rc4.json", _cfg_with("rules", [1]))), FormatError,
     r"rules must be None"),
    ("result-config-no-task", lambda d: load_result(_write(d, "rc5.json", {**make_run().to_dict(), "config": {}})),
     FormatError, r"missing or bad field"),
    ("result-wrong-kind", lambda d: load_result(_write(d, "rc6.json", RULES)), FormatError,
     r"is a 'slimbench.rules' file"),
    ("results-folder-bad", lambda d: load_results(_write(d / "..", "rc7.json", _run_with("lr", "x")).parent), FormatError,
     r"rc7.json"),
    # rules files
    ("rules-not-list", lambda d: load_rules(_write(d, "r1.json", {**RULES, "rules": {"a": 1}})), FormatError,
     r"'rules' must be a list"),
    ("rules-bad-by", lambda d: load_rules(_write(d, "r2.json", {**RULES, "by": "size", "rules": []})), FormatError,
     r"'by' must be 'name' or 'layer_type'"),
    ("rules-no-dims", lambda d: load_rules(_write(d, "r3.json", {**RULES, "rules": [{"match": "a"}]})), FormatError,
     r"rule #0 needs 'match' and 'dims'"),
    ("rules-entry-not-dict", lambda d: load_rules(_write(d, "r4.json", {**RULES, "rules": ["a"]})), FormatError,
     r"rule #0 needs 'match' and 'dims'"),
    ("rules-unknown-type", lambda d: load_rules(_write(d, "r5.json", {**RULES, "by": "layer_type",
                                                                       "rules": [{"match": "warp", "dims": [0]}]})),
     FormatError, r"unknown layer type 'warp'"),
    ("rules-dims-float", lambda d: load_rules(_write(d, "r6.json", {**RULES, "rules": [{"match": "a", "dims": [0.7]}]})),
     FormatError, r"dims must be .*list of ints, got \[0.7\]"),
    ("rules-dims-bool", lambda d: load_rules(_write(d, "r7.json", {**RULES, "rules": [{"match": "a", "dims": [True]}]})),
     FormatError, r"dims must be .*list of ints, got \[True\]"),
    ("rules-dims-number", lambda d: load_rules(_write(d, "r8.json", {**RULES, "rules": [{"match": "a", "dims": 1}]})),
     FormatError, r"dims must be"),
    ("rules-match-int", lambda d: load_rules(_write(d, "r9.json", {**RULES, "rules": [{"match": 1, "dims": [0]}]})),
     FormatError, r"'match' must be a string"),
    ("rules-dup-entry", lambda d: load_rules(_write(d, "r10.json", {**RULES, "rules": [{"match": "a", "dims": [0]},
                                                                                       {"match": "a", "dims": [1]}]})),
     FormatError, r"appears twice"),
    ("rules-dup-key", lambda d: load_rules(_write(d, "r11.json", '{"format": "slimbench.rules", "version": 1, '
                                                                 '"rules": [], "rules": []}')), FormatError,
     r"duplicate key 'rules'"),
    ("rules-version-true", lambda d: load_rules(_write(d, "r12.json", {**RULES, "version": True, "rules": []})),
     FormatError, r"positive integer 'version'"),
    ("rules-cutoff-str", lambda d: load_rules(_write(d, "r13.json", {**RULES, "rules": [], "cutoff": "1"})),
     FormatError, r"'cutoff' must be a number"),
    ("rules-too-many", lambda d: load_rules(_write(d, "r14.json", {**RULES, "rules": [
        {"match": f"p{i}", "dims": [0]} for i in range(100_001)]})), FormatError, r"at most 100000"),
    ("rules-wrong-kind", lambda d: load_rules(_write(d, "r15.json", SNR)), FormatError, r"is a 'slimbench.snr' file"),
    ("rules-missing", lambda d: load_rules(d / "absent.json"), FormatError, r"absent.json: no such file"),
    # rules given as dicts, resolved against a model's shapes
    ("resolve-dims-float", lambda d: resolve(SHAPES, {"fc.weight": [0.7]}), VE, r"list of ints, got \[0.7\]"),
    ("resolve-dims-bool", lambda d: resolve(SHAPES, {"fc.weight": [True]}), VE, r"list of ints, got \[True\]"),
    ("resolve-dims-int", lambda d: resolve(SHAPES, {"fc.weight": 0}), VE, r"list of ints, got 0"),
    ("resolve-dim-too-big", lambda d: resolve(SHAPES, {"fc.weight": [5]}), VE, r"dim 5 does not exist"),
    ("resolve-dim-repeated", lambda d: resolve(SHAPES, {"fc.weight": [0, 0]}), VE, r"repeat a dim"),
    ("resolve-unknown-alias", lambda d: resolve(SHAPES, {"fc.weight": "sideways"}), VE, r"unknown dims 'sideways'"),
    ("resolve-no-match", lambda d: resolve(SHAPES, {"fc.wieght": [0]}), VE,
     r"'fc.wieght' matches no parameter.*closest parameter names: fc.weight"),
    ("resolve-key-int", lambda d: resolve(SHAPES, {3: [0]}), VE, r"rule key 3 is not a string"),
    ("resolve-unknown-type", lambda d: resolve(SHAPES, {"type:warp": [0]}), VE, r"unknown layer type"),
    ("resolve-not-rules", lambda d: resolve(SHAPES, 3.5), VE, r"rules must be"),
    ("resolve-missing-file", lambda d: resolve(SHAPES, str(d / "absent-rules.json")), FormatError, r"no such file"),
    # registry and SlimAdam construction
    ("build-unknown", lambda d: build_optimizer("adamx", _Lin()), (KeyError, ValueError), r"adamx"),
    ("build-lr-negative", lambda d: build_optimizer("adamw", _Lin(), lr=-1.0), VE, r"Invalid learning rate: -1.0"),
    ("build-slimadam-lr-negative", lambda d: build_optimizer("slimadam", _Lin(), lr=-1.0), VE, r"Invalid learning rate"),
    ("build-wd-negative", lambda d: build_optimizer("slimadam", _Lin(), weight_decay=-0.1), VE, r"weight_decay"),
    ("build-rules-for-adamw", lambda d: build_optimizer("adamw", _Lin(), rules="paper"), VE, r"takes no rules"),
    ("build-bad-rules", lambda d: build_optimizer("slimadam", _Lin(), rules={"nope": [0]}), VE,
     r"'nope' matches no parameter"),
    ("build-fused-foreach", lambda d: build_optimizer("slimadam", _Lin(), foreach=True, fused=True), VE,
     r"cannot be `True` together"),
    ("build-beta-one", lambda d: build_optimizer("slimadam", _Lin(), betas=(0.9, 1.0)), VE,
     r"Invalid beta parameter at index 1"),
    # compare checks
    ("check-no-threshold", lambda d: parse_check("final_loss"), VE, r"bad check 'final_loss'"),
    ("check-unknown-metric", lambda d: parse_check("speed:5%"), VE, r"unknown metric 'speed'"),
    ("check-text-threshold", lambda d: parse_check("final_loss:x%"), VE, r"bad check"),
    ("check-negative", lambda d: parse_check("final_loss:-5%"), VE, r"bad check"),
    ("check-empty", lambda d: parse_check(""), VE, r"bad check ''"),
    ("check-two-colons", lambda d: parse_check("final_loss:5%:6"), VE, r"bad check"),
    # report folders and explicit files
    ("report-missing-path", lambda d: load([d / "absent-dir"]), FormatError, r"no such file or folder"),
    ("report-explicit-stray", lambda d: load([_write(d, "s1.json", {"x": 1})]), FormatError, r"not a slimbench file"),
    ("report-explicit-mistyped", lambda d: load([_write(d, "s2.json", _run_with("val", [1]))]), FormatError,
     r"field 'val' must be"),
    ("report-unknown-kind", lambda d: load([_write(d, "s3.json", {"format": "slimbench.zzz", "version": 1})]),
     FormatError, r"which reports do not read"),
    # SNR records and schedules
    ("snr-params-not-list", lambda d: load_snr(_write(d, "n1.json", {**SNR, "params": 3})), FormatError,
     r"'params' must be a list"),
    ("snr-wrong-kind", lambda d: load_snr(_write(d, "n2.json", RULES)), FormatError, r"is a 'slimbench.rules' file"),
    ("snr-newer", lambda d: load_snr(_write(d, "n3.json", {**SNR, "version": 9})), FormatError, r"version 9 is newer"),
    ("schedule-bogus", lambda d: Schedule.parse("bogus"), VE, r"bad schedule 'bogus'"),
    ("schedule-every-zero", lambda d: Schedule.parse("every:0"), VE, r"every:0|>= 1|positive"),
]


def test_the_battery_is_big_enough():
    assert len(CASES) >= 100 and len({c[0] for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("api") / "files"


@pytest.mark.parametrize("call,exc,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_the_documented_error(call, exc, pattern, folder):
    folder.mkdir(parents=True, exist_ok=True)
    with pytest.raises(exc) as info:
        call(folder)
    msg = str(info.value.args[0]) if isinstance(info.value, KeyError) and info.value.args else str(info.value)
    assert re.search(pattern, msg), msg
    assert "\n" not in msg and "Traceback" not in msg


# ---------------------------------------------------------------------------------------------------------
# Fuzz: random rules documents and random result files never give a traceback, only documented errors

JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=4),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                    max_leaves=8)
DIMS = st.one_of(JSON, st.sampled_from(["none", "fan_in", "fan_out", "both", "embed", "token"]),
                 st.lists(st.integers(-3, 3), max_size=3))
RULE_DOC = st.fixed_dictionaries(
    {"format": st.sampled_from(["slimbench.rules", "slimbench.run", "x"]), "version": st.sampled_from([1, 0, True, "1", 2]),
     "rules": st.one_of(JSON, st.lists(st.fixed_dictionaries({"match": st.one_of(st.sampled_from(
         ["fc.weight", "fc.*", "type:query", "nope"]), JSON), "dims": DIMS}), max_size=3))},
    optional={"by": st.sampled_from(["name", "layer_type", "size", 3]), "cutoff": JSON})
RUN_FIELDS = ["config", "status", "train_loss", "val", "grad_norm", "lr", "step_time_s", "divergence", "memory",
              "optimizer", "task", "env", "wall_time_s", "started_at", "summary", "version", "format"]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(doc=st.one_of(RULE_DOC, JSON))
def test_fuzz_rules_documents_give_only_documented_errors(doc, tmp_path_factory):
    path = tmp_path_factory.mktemp("fz") / "rules.json"
    path.write_text(json.dumps(doc))
    try:
        rules = load_rules(path)
        resolve(SHAPES, rules)
    except ValueError as e:  # FormatError is a ValueError
        assert str(e) and "\n" not in str(e)


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(RUN_FIELDS), st.one_of(JSON, st.just(KeyError))), max_size=3),
       config_mutations=st.lists(st.tuples(st.sampled_from(["task", "optimizer", "lr", "seed", "preset", "rules",
                                                            "overrides", "divergence_factor"]), JSON), max_size=2))
def test_fuzz_result_files_load_or_are_skipped_and_never_break_report_or_compare(mutations, config_mutations,
                                                                                 tmp_path_factory):
    folder = tmp_path_factory.mktemp("fr")
    d = make_run("adamw", 1e-3, diverged_at=None).to_dict()
    for field, value in mutations:
        if value is KeyError:
            d.pop(field, None)
        else:
            d[field] = value
    if isinstance(d.get("config"), dict):
        for field, value in config_mutations:
            d["config"][field] = value
    (folder / "run.json").write_text(json.dumps(d))
    good = folder / "good.json"  # a good neighbour: the folder always has something to report
    good.write_text(json.dumps(make_run("slimadam", 1e-3).to_dict()))
    c = load([folder])  # a bad file is skipped with its reason, never raised from a folder
    assert len(c.runs) + len(c.skipped) == 2 and all("\n" not in why for _, why in c.skipped)
    build_sections(c, Options())
    compare(c, c, [parse_check("final_loss:5%"), parse_check("state_bytes:exact")])
    for item in c.runs:
        assert isinstance(item.data, RunResult)
