"""Bad input as data (issue 12): every row is one bad command line and the one-line error it must give.

Contract (slimbench/cli/__init__.py): exit code 2, stderr is exactly one line starting with "error: ",
no traceback. Rows run ``slimbench.cli.main`` in-process (no subprocess) and fail before any training, so
the whole table takes seconds. ``{d}`` in an argument is the folder of bad files built below.
"""
from __future__ import annotations

import json
import re

import pytest

from slimbench.cli import main
from slimbench.snr.record import ParamInfo, SNRRecord
from synthetic_results import make_run, write_runs

RUN = {"format": "slimbench.run", "version": 1}
JSON_FILES = {  # name -> content written verbatim (str) or as JSON (anything else)
    "notjson.json": "{not json",
    "truncated.json": '{"format": "slimbench.run", "version": 1, "config": {',
    "empty.json": "",
    "dup.json": '{"format": "slimbench.rules", "format": "slimbench.rules", "version": 1, "rules": []}',
    "dup_nested.json": '{"format": "slimbench.rules", "version": 1, "rules": [{"match": "a", "match": "b", "dims": [0]}]}',
    "stray.json": {"hello": 1},
    "array.json": [1, 2, 3],
    "nan_top.json": "NaN",
    "newer.json": {"format": "slimbench.run", "version": 99},
    "version_true.json": {"format": "slimbench.rules", "version": True, "rules": []},
    "version_zero.json": {"format": "slimbench.rules", "version": 0, "rules": []},
    "version_neg.json": {"format": "slimbench.rules", "version": -1, "rules": []},
    "version_str.json": {"format": "slimbench.rules", "version": "1", "rules": []},
    "version_float.json": {"format": "slimbench.rules", "version": 1.0, "rules": []},
    "version_missing.json": {"format": "slimbench.rules", "rules": []},
    "unknown_kind.json": {"format": "slimbench.other", "version": 1},
    "format_int.json": {"format": 3, "version": 1},
    "bench_bad.json": {"machine_info": {}, "benchmarks": [{"name": "x"}]},
    "snr_bad.json": {"format": "slimbench.snr", "version": 1, "params": "nope"},
    "snr_newer.json": {"format": "slimbench.snr", "version": 7},
    "rules_not_list.json": {"format": "slimbench.rules", "version": 1, "rules": {"a": [0]}},
    "rules_bad_by.json": {"format": "slimbench.rules", "version": 1, "by": "size", "rules": []},
    "rules_no_dims.json": {"format": "slimbench.rules", "version": 1, "rules": [{"match": "x"}]},
    "rules_bad_type.json": {"format": "slimbench.rules", "version": 1, "by": "layer_type",
                            "rules": [{"match": "warp_drive", "dims": [0]}]},
    "rules_nomatch.json": {"format": "slimbench.rules", "version": 1, "by": "name",
                           "rules": [{"match": "no.such.weight", "dims": [0]}]},
    "profile_newer.json": {"format": "slimbench.profile", "version": 2},
    "audit_noversion.json": {"format": "slimbench.audit"},
    "run_missing_fields.json": {**RUN, "config": {"task": "gpt", "optimizer": "adamw", "lr": 0.001}},
}


def _mistyped_run(field: str, value) -> dict:
    d = make_run().to_dict()
    d[field] = value
    return d


MISTYPED = {"train_loss": ["x"], "val": [{"step": "zero", "loss": 1.0}], "lr": None, "status": "done",
            "memory": {"state_bytes": "12"}, "wall_time_s": "1s", "step_time_s": [True], "env": [],
            "divergence": {"step": 1.5}, "started_at": 5}


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    for name, content in JSON_FILES.items():
        (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    for field, value in MISTYPED.items():
        (folder / f"run_bad_{field}.json").write_text(json.dumps(_mistyped_run(field, value)))
    d_cfg = make_run().to_dict()
    d_cfg["config"]["lr"] = "fast"
    (folder / "run_bad_config.json").write_text(json.dumps(d_cfg))
    (folder / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with open(folder / "huge.json", "wb") as f:  # sparse: the size limit must refuse it without reading it
        f.truncate(40 * 2**20)
    (folder / "emptydir").mkdir()
    write_runs(folder / "base", [make_run("adamw", 1e-3), make_run("slimadam", 1e-3)])
    params = [ParamInfo("w", (8, 8), "query", True)]
    SNRRecord(params, [1, 2], {"w": {"0": [0.5, 0.5], "1": [4.0, 6.0], "0,1": [0.4, 0.4]}}).save(folder / "snr.json")
    return folder


RUN_OK = ["run", "--task", "digits", "--steps", "2", "--no-progress"]
SNR_OK = ["snr", "--task", "digits", "--out", "{d}/snr_out.json", "--no-progress"]

CASES: list[tuple[str, list[str], str]] = [
    # (id, argv, regex the one error line must match)
    ("unknown-subcommand", ["nosuch"], r"invalid choice: 'nosuch'"),
    ("unknown-top-flag", ["--bogus"], r"unrecognized arguments: --bogus"),
    ("run-lrs-not-floats", ["run", "--lrs", "x"], r"run: argument --lrs: expected comma-separated floats"),
    ("run-seeds-not-ints", ["run", "--seeds", "a"], r"argument --seeds: expected comma-separated ints"),
    ("run-seeds-float", ["run", "--seeds", "1.5"], r"argument --seeds"),
    ("run-steps-not-int", ["run", "--steps", "x"], r"argument --steps: invalid int value"),
    ("run-threads-not-int", ["run", "--threads", "x"], r"argument --threads"),
    ("run-divfactor-not-float", ["run", "--divergence-factor", "x"], r"argument --divergence-factor"),
    ("run-set-no-equals", ["run", "--set", "novalue"], r"expected KEY=VALUE, got 'novalue'"),
    ("run-set-no-key", ["run", "--set", "=3"], r"expected KEY=VALUE"),
    ("run-executor-unknown", ["run", "--executor", "ray"], r"argument --executor: invalid choice: 'ray'"),
    ("run-executor-opt-bad", ["run", "--executor-opt", "x"], r"expected KEY=VALUE"),
    ("run-no-task", ["run"], r"--task is required"),
    ("run-unknown-task", ["run", "--task", "nope"], r"unknown task 'nope'"),
    ("run-unknown-preset", [*RUN_OK, "--preset", "huge"], r"huge"),
    ("run-threads-zero", [*RUN_OK, "--threads", "0"], r"--threads must be >= 1, got 0"),
    ("run-steps-zero", ["run", "--task", "digits", "--steps", "0"], r"--steps must be >= 1, got 0"),
    ("run-steps-negative", ["run", "--task", "digits", "--steps", "-5"], r"--steps must be >= 1, got -5"),
    ("run-lr-negative", [*RUN_OK, "--lrs=-1e-3"], r"lr must be a finite number >= 0"),
    ("run-lr-nan", [*RUN_OK, "--lrs", "nan"], r"lr must be a finite number >= 0, got nan"),
    ("run-lr-inf", [*RUN_OK, "--lrs", "inf"], r"lr must be a finite number >= 0, got inf"),
    ("run-lr-repeated", [*RUN_OK, "--lrs", "1e-3,1e-3"], r"lrs repeats a value"),
    ("run-seed-negative", [*RUN_OK, "--seeds=-1"], r"seed must be an int >= 0, got -1"),
    ("run-seed-repeated", [*RUN_OK, "--seeds", "0,0"], r"seeds repeats a value"),
    ("run-lrs-empty", [*RUN_OK, "--lrs", ","], r"argument --lrs: expected at least one float, got ','"),
    ("run-unknown-optimizer", [*RUN_OK, "--optimizers", "adamx"], r"unknown optimizer 'adamx'"),
    ("run-optimizers-empty", [*RUN_OK, "--optimizers", ","], r"argument --optimizers: expected at least one str"),
    ("run-seeds-empty", [*RUN_OK, "--seeds", " , "], r"argument --seeds: expected at least one int"),
    ("run-unknown-setting", [*RUN_OK, "--set", "depth=3"], r"has no setting"),
    ("run-setting-bad-type", [*RUN_OK, "--set", "eval_every=\"often\""], r"eval_every"),
    ("run-rules-unused", [*RUN_OK, "--rules", "paper"], r"none of adamw takes rules"),
    ("run-divfactor-small", [*RUN_OK, "--divergence-factor", "0.5"], r"divergence_factor must be > 1"),
    ("run-divfactor-nan", [*RUN_OK, "--divergence-factor", "nan"], r"divergence_factor must be > 1"),
    ("run-rules-missing", [*RUN_OK, "--optimizers", "slimadam", "--rules", "{d}/missing.json"], r"missing.json"),
    ("run-rules-notjson", [*RUN_OK, "--optimizers", "slimadam", "--rules", "{d}/notjson.json"], r"not valid JSON"),
    ("run-rules-dup", [*RUN_OK, "--optimizers", "slimadam", "--rules", "{d}/dup.json"], r"duplicate key 'format'"),
    ("run-rules-dup-nested", [*RUN_OK, "--optimizers", "slimadam", "--rules", "{d}/dup_nested.json"],
     r"duplicate key 'match'"),
    ("run-rules-version-true", [*RUN_OK, "--optimizers", "slimadam", "--rules", "{d}/version_true.json"],
     r"positive integer 'version' \(got True\)"),
    ("run-rules-wrong-kind", [*RUN_OK, "--optimizers", "slimadam", "--rules", "{d}/newer.json"],
     r"is a 'slimbench.run' file, expected a 'slimbench.rules' file"),
    ("run-rules-nomatch", [*RUN_OK, "--optimizers", "adamw,slimadam", "--rules", "{d}/rules_nomatch.json",
                           "--out", "{d}/out-nomatch"], r"slimadam .*no.such.weight.* matches no parameter"),
    ("run-rules-bad-type", [*RUN_OK, "--optimizers", "slimadam", "--rules", "{d}/rules_bad_type.json"],
     r"unknown layer type 'warp_drive'"),
    ("run-rules-huge", [*RUN_OK, "--optimizers", "slimadam", "--rules", "{d}/huge.json"], r"larger than slimbench reads"),
    ("run-out-newline", [*RUN_OK, "--out", "{d}/a\nb", "--print-commands"], r"line break"),
    ("run-out-is-file", [*RUN_OK, "--out", "{d}/stray.json"], r"stray.json"),
    # report
    ("report-missing", ["report", "{d}/missing"], r"missing: no such file or folder"),
    ("report-notjson", ["report", "{d}/notjson.json"], r"notjson.json: not valid JSON"),
    ("report-truncated", ["report", "{d}/truncated.json"], r"truncated.json: not valid JSON"),
    ("report-empty-file", ["report", "{d}/empty.json"], r"empty.json: not valid JSON"),
    ("report-dup", ["report", "{d}/dup.json"], r"duplicate key 'format'"),
    ("report-stray", ["report", "{d}/stray.json"], r"stray.json: not a slimbench file"),
    ("report-array", ["report", "{d}/array.json"], r"array.json: not a slimbench file"),
    ("report-nan-top", ["report", "{d}/nan_top.json"], r"not a slimbench file"),
    ("report-newer", ["report", "{d}/newer.json"], r"version 99 is newer"),
    ("report-version-true", ["report", "{d}/version_true.json"], r"positive integer 'version' \(got True\)"),
    ("report-version-zero", ["report", "{d}/version_zero.json"], r"positive integer 'version' \(got 0\)"),
    ("report-version-neg", ["report", "{d}/version_neg.json"], r"positive integer 'version' \(got -1\)"),
    ("report-version-str", ["report", "{d}/version_str.json"], r"positive integer 'version' \(got '1'\)"),
    ("report-version-float", ["report", "{d}/version_float.json"], r"positive integer 'version' \(got 1.0\)"),
    ("report-version-missing", ["report", "{d}/version_missing.json"], r"positive integer 'version' \(got None\)"),
    ("report-unknown-kind", ["report", "{d}/unknown_kind.json"], r"'slimbench.other' file, which reports do not read"),
    ("report-format-int", ["report", "{d}/format_int.json"], r"format_int.json"),
    ("report-bench-bad", ["report", "{d}/bench_bad.json"], r"pytest-benchmark entry #0 has no 'name' or 'stats'"),
    ("report-snr-bad", ["report", "{d}/snr_bad.json"], r"'params' must be a list"),
    ("report-snr-newer", ["report", "{d}/snr_newer.json"], r"version 7 is newer"),
    ("report-rules-not-list", ["report", "{d}/rules_not_list.json"], r"'rules' must be a list"),
    ("report-rules-bad-by", ["report", "{d}/rules_bad_by.json"], r"'by' must be 'name' or 'layer_type'"),
    ("report-rules-no-dims", ["report", "{d}/rules_no_dims.json"], r"rule #0 needs 'match' and 'dims'"),
    ("report-profile-newer", ["report", "{d}/profile_newer.json"], r"version 2 is newer"),
    ("report-audit-noversion", ["report", "{d}/audit_noversion.json"], r"positive integer 'version'"),
    ("report-run-missing-fields", ["report", "{d}/run_missing_fields.json"], r"missing or bad field"),
    *[(f"report-run-bad-{f}", ["report", f"{{d}}/run_bad_{f}.json"], rf"field '{f}' must be")
      for f in MISTYPED],
    ("report-run-bad-config", ["report", "{d}/run_bad_config.json"], r"lr must be a finite number"),
    ("report-binary", ["report", "{d}/binary.json"], r"binary.json: not a UTF-8 text file"),
    ("report-deep", ["report", "{d}/deep.json"], r"deep.json"),
    ("report-huge", ["report", "{d}/huge.json"], r"huge.json: 40.0 MiB is larger than slimbench reads"),
    ("report-empty-dir", ["report", "{d}/emptydir"], r"no result files found in"),
    ("report-within-negative", ["report", "{d}/base", "--within", "-1"], r"--within must be >= 0, got -1"),
    ("report-within-nan", ["report", "{d}/base", "--within", "nan"], r"--within must be >= 0, got nan"),
    ("report-within-text", ["report", "--within", "x"], r"argument --within: invalid float value"),
    ("report-steps-text", ["report", "--steps", "a"], r"expected comma-separated step numbers"),
    ("report-steps-negative", ["report", "--steps=-1"], r"expected step numbers >= 0"),
    ("report-loss-unknown", ["report", "--loss", "x"], r"argument --loss: invalid choice"),
    # compare
    ("compare-missing", ["compare", "{d}/missing", "{d}/base"], r"missing: no such file or folder"),
    ("compare-no-new", ["compare", "{d}/base"], r"the following arguments are required: NEW"),
    ("compare-unknown-metric", ["compare", "{d}/base", "{d}/base", "--check", "nope:1%"], r"unknown metric"),
    ("compare-check-no-threshold", ["compare", "{d}/base", "{d}/base", "--check", "final_loss"], r"final_loss"),
    ("compare-check-bad-pct", ["compare", "{d}/base", "{d}/base", "--check", "final_loss:x%"], r"final_loss:x%"),
    ("compare-check-negative", ["compare", "{d}/base", "{d}/base", "--check", "final_loss:-5%"], r"final_loss:-5%"),
    ("compare-check-empty", ["compare", "{d}/base", "{d}/base", "--check", "state_bytes:"], r"state_bytes:"),
    ("compare-empty-baseline", ["compare", "{d}/emptydir", "{d}/base"], r"no result files in the baseline"),
    ("compare-new-notjson", ["compare", "{d}/base", "{d}/notjson.json"], r"not valid JSON"),
    ("compare-base-dup", ["compare", "{d}/dup.json", "{d}/base"], r"duplicate key"),
    ("compare-new-mistyped", ["compare", "{d}/base", "{d}/run_bad_lr.json"], r"field 'lr' must be"),
    ("compare-new-missing", ["compare", "{d}/base", "{d}/nothing-here"], r"no such file or folder"),
    # rules
    ("rules-no-file", ["rules"], r"SNR_JSON"),
    ("rules-missing", ["rules", "{d}/missing.json"], r"missing.json: no such file"),
    ("rules-notjson", ["rules", "{d}/notjson.json"], r"not valid JSON"),
    ("rules-wrong-kind", ["rules", "{d}/newer.json"], r"is a 'slimbench.run' file, expected a 'slimbench.snr'"),
    ("rules-dup", ["rules", "{d}/dup.json"], r"duplicate key"),
    ("rules-snr-newer", ["rules", "{d}/snr_newer.json"], r"version 7 is newer"),
    ("rules-snr-bad", ["rules", "{d}/snr_bad.json"], r"'params' must be a list"),
    ("rules-cutoff-text", ["rules", "{d}/snr.json", "--cutoff", "x"], r"argument --cutoff: invalid float"),
    ("rules-skip-negative", ["rules", "{d}/snr.json", "--skip-steps=-1"], r"--skip-steps must be >= 0"),
    ("rules-skip-all", ["rules", "{d}/snr.json", "--skip-steps", "1000"], r"no SNR measurements after step 1000"),
    ("rules-sweep-text", ["rules", "{d}/snr.json", "--sweep-cutoffs", "a,b"], r"cutoffs must be comma-separated"),
    ("rules-sweep-empty", ["rules", "{d}/snr.json", "--sweep-cutoffs", ","], r"give at least one cutoff"),
    ("rules-apply-unknown-task", ["rules", "{d}/snr.json", "--apply-to", "nope"], r"unknown task 'nope'"),
    ("rules-huge", ["rules", "{d}/huge.json"], r"larger than slimbench reads"),
    # snr
    ("snr-no-args", ["snr"], r"the following arguments are required: .*--out"),
    ("snr-unknown-task", ["snr", "--task", "nope", "--out", "{d}/x.json"], r"unknown task 'nope'"),
    ("snr-steps-zero", [*SNR_OK, "--steps", "0"], r"--steps must be >= 1, got 0"),
    ("snr-bad-schedule", [*SNR_OK, "--schedule", "bogus"], r"bad schedule 'bogus'"),
    ("snr-optimizer-choice", [*SNR_OK, "--optimizer", "lion"], r"argument --optimizer: invalid choice"),
    ("snr-unknown-setting", [*SNR_OK, "--set", "depth=3"], r"has no setting"),
    ("snr-set-no-equals", [*SNR_OK, "--set", "depth"], r"--set expects KEY=VALUE"),
    ("snr-seed-text", [*SNR_OK, "--seed", "x"], r"argument --seed: invalid int value"),
    ("snr-lr-text", [*SNR_OK, "--lr", "x"], r"argument --lr: invalid float value"),
    ("snr-lr-negative", [*SNR_OK, "--lr=-1"], r"lr"),
    # audit / profile / optimizers (the --model option is another engineer's: only its name is asserted)
    ("audit-unknown-optimizer", ["audit", "--optimizers", "adamx"], r"unknown optimizer\(s\) adamx"),
    ("audit-optimizers-empty", ["audit", "--optimizers", ","], r"--optimizers is empty"),
    ("audit-unknown-model", ["audit", "--model", "nope-model"], r"nope-model"),
    ("audit-dtype-choice", ["audit", "--dtype", "int8"], r"argument --dtype: invalid choice"),
    ("audit-format-choice", ["audit", "--format", "xml"], r"argument --format: invalid choice"),
    ("audit-rules-missing", ["audit", "--model", "gpt2-tiny", "--optimizers", "slimadam", "--rules",
                             "{d}/missing.json"], r"missing.json"),
    ("audit-rules-dup", ["audit", "--model", "gpt2-tiny", "--optimizers", "slimadam", "--rules", "{d}/dup.json"],
     r"duplicate key"),
    ("profile-unknown-optimizer", ["profile", "--optimizers", "adamx"], r"unknown optimizer\(s\) adamx"),
    ("profile-batch-text", ["profile", "--batch-size", "x"], r"argument --batch-size: invalid int value"),
    ("profile-batch-zero", ["profile", "--optimizers", "adamw", "--batch-size", "0"], r"--batch-size must be >= 1, got 0"),
    ("profile-seq-len-zero", ["profile", "--optimizers", "adamw", "--seq-len", "0"], r"--seq-len must be >= 1, got 0"),
    ("profile-warmup-negative", ["profile", "--optimizers", "adamw", "--warmup=-1"], r"--warmup must be >= 0"),
    ("profile-device-unknown", ["profile", "--optimizers", "adamw", "--device", "tpu"],
     r"--device 'tpu' is not a torch device"),
    ("optimizers-format-choice", ["optimizers", "--format", "xml"], r"argument --format: invalid choice"),
    # data / experiment
    ("data-no-action", ["data"], r"the following arguments are required: ACTION"),
    ("data-unknown-action", ["data", "nope"], r"invalid choice: 'nope'"),
    ("data-from-missing", ["data", "fetch", "--from", "{d}/missing.tar.gz"], r"missing.tar.gz"),
    ("data-from-wrong-file", ["data", "fetch", "--from", "{d}/stray.json"], r"does not match the expected"),
    ("experiment-no-name", ["experiment"], r"give an experiment NAME"),
    ("experiment-unknown", ["experiment", "nope"], r"nope"),
    ("experiment-threads-zero", ["experiment", "headline", "--threads", "0"], r"--threads must be >= 1, got 0"),
    ("experiment-threads-text", ["experiment", "--threads", "x"], r"argument --threads: invalid int value"),
]


def test_the_battery_is_big_enough():
    assert len(CASES) >= 100 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(argv, pattern, d, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMBENCH_DATA", str(tmp_path / "data"))  # `data fetch --from` rows write nothing real
    monkeypatch.chdir(tmp_path)
    code = main([a.replace("{d}", str(d)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 or (argv[0] == "run" and len(lines) == 2 and " runs -> " in lines[0]), err
    assert lines[-1].startswith("error: ") and "Traceback" not in err
    assert re.search(pattern, lines[-1]), lines[-1]
