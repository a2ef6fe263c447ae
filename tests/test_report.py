"""Report: loading by content, the section tables' arithmetic, report.md with sources, the CLI."""
from __future__ import annotations

import json
import math
import struct

import pytest

from slimbench.cli import main
from slimbench.io import FormatError
from slimbench.report import load
from slimbench.report.load import Collection, Item
from slimbench.report.markdown import SourceIndex, table_markdown, write_report
from slimbench.report.plots import line_panels
from slimbench.report.lr import lr_grid_columns, lr_grid_rows, lr_rows, lr_summary_rows
from slimbench.report.memory import memory_rows
from slimbench.report.sections import build_sections
from slimbench.report.snr import snr_rows
from slimbench.report.step_time import step_time_rows
from slimbench.report.steps import default_steps, step_tables
from slimbench.report.table import Options, Table, format_value, table_from_lists
from slimbench.snr.derive import derive_rules
from slimbench.snr.record import ParamInfo, SNRRecord
from synthetic_results import bench_entry, make_run, write_bench, write_json, write_runs


def _sweep(tmp_path):
    """gpt: adamw and slimadam at 4 lrs x 2 seeds; slimadam diverges at the largest lr on seed 1."""
    runs = []
    losses = {1e-3: 2.20, 3e-3: 2.00, 1e-2: 2.06, 3e-2: 2.50}
    for lr, base in losses.items():
        for seed in (0, 1):
            runs.append(make_run("adamw", lr, seed, final=base + 0.02 * seed, state_bytes=2000))
            div = 5 if (lr == 3e-2 and seed == 1) else None
            runs.append(make_run("slimadam", lr, seed, final=base - 0.01 + 0.02 * seed, diverged_at=div,
                                 state_bytes=1010, saved=0.99, step_time=0.008))
    return write_runs(tmp_path / "sweep", runs)


def _snr_record() -> SNRRecord:
    params = [ParamInfo("blocks.0.attn.q.weight", (8, 8), "query", True),
              ParamInfo("blocks.1.attn.q.weight", (8, 8), "query", True),
              ParamInfo("blocks.0.mlp.up.weight", (32, 8), "mlp_up", True),
              ParamInfo("blocks.0.ln1.weight", (8,), "norm", False)]
    snr = {"blocks.0.attn.q.weight": {"0": [0.5, 0.5], "1": [4.0, 6.0], "0,1": [0.4, 0.4]},
           "blocks.1.attn.q.weight": {"0": [0.7, 0.7], "1": [2.0, 4.0], "0,1": [0.5, 0.5]},
           "blocks.0.mlp.up.weight": {"0": [3.0, 3.0], "1": [0.2, 0.2], "0,1": [0.1, 0.1]}}
    return SNRRecord(params, [1, 2], snr, provenance={"commit": "feedbeef"})


# ---------------------------------------------------------------------------------------------------------
# loading


def test_load_recognises_every_kind_and_skips_strays(tmp_path):
    _sweep(tmp_path)
    write_bench(tmp_path / "bench.json", [bench_entry("adamw-gpt-3m", "adamw")])
    rec = _snr_record()
    rec.save(tmp_path / "snr" / "snr.json")
    derive_rules(load([tmp_path / "snr" / "snr.json"]).snr[0].data, 1.0, depth_average=True).save(
        tmp_path / "snr" / "rules.json")
    write_json(tmp_path / "profile.json", {"format": "slimbench.profile", "version": 1, "model": "gpt2-tiny",
                                           "device": "cpu", "dtype": "float32", "optimizers": []})
    (tmp_path / "stray.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.json").write_text("{")
    c = load([tmp_path])
    assert c.counts() == {"runs": 16, "snr": 1, "rules": 1, "benchmarks": 1, "profiles": 1, "audits": 0,
                          "skipped": 1}
    assert c.skipped[0][0].endswith("stray.json") and "no 'format'" in c.skipped[0][1]


def test_load_explicit_bad_files_fail_with_one_line(tmp_path):
    (tmp_path / "stray.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "cut.json").write_text('{"format": "slimbench.run", ')
    with pytest.raises(FormatError, match="stray.json: not a slimbench file"):
        load([tmp_path / "stray.json"])
    with pytest.raises(FormatError, match="not valid JSON"):
        load([tmp_path / "cut.json"])
    with pytest.raises(FormatError, match="no such file or folder"):
        load([tmp_path / "missing"])
    write_json(tmp_path / "new.json", {"format": "slimbench.run", "version": 99})
    with pytest.raises(FormatError, match="newer than this slimbench"):
        load([tmp_path / "new.json"])


# ---------------------------------------------------------------------------------------------------------
# tables


def test_lr_rows_aggregate_seeds_mark_divergence_and_best(tmp_path):
    c = load([_sweep(tmp_path)])
    rows = {(r["optimizer"], r["lr"]): r for r in lr_rows(c)}
    a = rows[("adamw", 3e-3)]
    assert a["seeds"] == 2 and a["final_mean"] == pytest.approx(2.01)
    assert a["final_std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))
    assert a["marker"] == "best" and len(a["sources"]) == 2
    d = rows[("slimadam", 3e-2)]
    assert d["diverged"] == 1 and d["final_mean"] == pytest.approx(2.49)  # the finished seed only
    assert "diverged 1/2" in d["marker"]


def test_robustness_is_the_contiguous_range_within_tolerance(tmp_path):
    c = load([_sweep(tmp_path)])
    summary = {s["optimizer"]: s for s in lr_summary_rows(lr_rows(c), Options(within=0.05))}
    s = summary["slimadam"]
    assert s["best_lr"] == 3e-3 and s["diverged_lrs"] == [3e-2]
    # 1e-2 (2.06 vs 2.00: +3%) is within 5%; 1e-3 (+10%) is not
    assert (s["robust_lo"], s["robust_hi"]) == (3e-3, 1e-2)
    assert s["robust_width"] == pytest.approx(1e-2 / 3e-3)
    tight = {s["optimizer"]: s for s in lr_summary_rows(lr_rows(c), Options(within=0.01))}
    assert tight["adamw"]["robust_width"] == 1.0


def test_lr_grid_cells_mean_and_half_range_diverged_and_not_run(tmp_path):
    rows = lr_rows(load([_sweep(tmp_path)]))
    grid = {g["optimizer"]: g for g in lr_grid_rows(rows, (1e-3, 3e-3, 3e-2, 1e-1))}
    mean, half = grid["adamw"]["lr0.003"]
    assert mean == pytest.approx(2.01) and half == pytest.approx(0.01)  # seeds 2.00 and 2.02
    assert grid["slimadam"]["lr0.03"] == "diverged" and grid["adamw"]["lr0.1"] == "not run"
    assert "lr0.01" not in grid["adamw"]  # an lr outside the grid's columns is left out
    table = Table("t", lr_grid_columns((3e-3, 3e-2)), list(grid.values()))
    headers, cells = table.cells()
    assert headers == ["optimizer", "lr 0.003", "lr 0.03"]
    assert cells[0] == ["adamw", "2.0100 ± 0.0100", "2.5100 ± 0.0100"] and cells[1][2] == "diverged"


def test_table_from_lists_formats_and_renders_like_the_report():
    t = table_from_lists("Gaps", ["vocab", "gap", "V saved", "snr"],
                         [[4096, (0.0213, 0.004), 0.982, 0.04313], [256, None, 0.5, float("nan")]],
                         note="a note", fmt=["g4", "pm+", "pct", "g4"])
    assert t.headers == ["vocab", "gap", "V saved", "snr"] and t.values()[0][0] == 4096
    assert t.cells()[1] == [["4096", "+0.0213 ± 0.0040", "98.2%", "0.04313"], ["256", "-", "50.0%", "-"]]
    md = table_markdown(t, level=2)
    assert md.startswith("## Gaps\n\n| vocab") and md.endswith("*a note*") and "| +0.0213 ± 0.0040 |" in md
    assert t.to_dict()["rows"][0] == [4096, (0.0213, 0.004), 0.982, 0.04313]
    with pytest.raises(ValueError, match="a row has 1 cells for 4 columns"):
        table_from_lists("Bad", ["a", "b", "c", "d"], [[1]])
    with pytest.raises(ValueError, match="2 formats for 4 columns"):
        table_from_lists("Bad", ["a", "b", "c", "d"], [], fmt=["g4", "g4"])
    assert format_value(1234.5678, "g4") == "1235" and format_value(12345, "g4") == "12345"


def test_line_panels_draw_finite_points_and_skip_empty_figures(tmp_path):
    panels = {"query": {"fan_in": ([0, 1, 2], [1.0, float("nan"), 3.0]), "both": ([0, 1], [None, -1.0])},
              "empty": {"fan_out": ([0], [None])}}
    ((title, path),) = line_panels(panels, tmp_path, "snr-by-depth", "SNR vs depth", "block", "SNR", logy=True)
    assert title == "SNR vs depth" and path.endswith("snr-by-depth.png")
    assert (tmp_path / "snr-by-depth.png").stat().st_size > 0
    assert line_panels({"empty": {"x": ([1.0], [float("inf")])}}, tmp_path / "none", "n", "t", "x", "y") == []
    assert not (tmp_path / "none").exists()



def test_line_panels_draw_error_bars_and_a_reference_line(tmp_path):
    """An experiment's series with errors (a gap and its seed half-range) and a reference (AdamW at 0): one
    PNG sized for one panel plus the legend beside it; a non-finite error is drawn as none."""
    series = {"all": {"SlimAdam, K_head=token": ([256, 1024], [0.01, 0.15], [0.002, float("nan")]),
                      "SlimAdam (paper)": ([256, 1024], [0.003, 0.002])}}
    ((title, path),) = line_panels(series, tmp_path, "gap", "gap vs vocab", "vocab", "gap (nats)", logx=True,
                                   hline=(0.0, "AdamW (gap 0)"), colours={"SlimAdam (paper)": "#000000"})
    head = open(path, "rb").read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (836, 440)  # 7.6 x 4.0 in


def test_loss_at_steps_and_divergence_marker(tmp_path):
    runs = [make_run("adamw", 1e-2, 0, steps=9, final=1.0), make_run("slimadam", 1e-2, 0, steps=9, diverged_at=3)]
    c = load([write_runs(tmp_path, runs)])
    (table,) = step_tables(c, Options(steps=(0, 4, 8)))
    rows = {r["optimizer"]: r for r in table.rows}
    assert rows["adamw"]["s0"] == 4.0 and rows["adamw"]["s8"] == pytest.approx(1.0)
    assert rows["slimadam"]["s4"] == "div@3" and rows["slimadam"]["status"] == "diverged"
    headers, cells = table.cells()
    assert "step 4" in headers and cells
    assert default_steps(300) == [0, 75, 150, 224, 299]


def test_memory_rows_ratio_and_vs_adamw(tmp_path):
    write_bench(tmp_path / "b.json", [bench_entry("adamw-gpt-3m", "adamw", state_bytes=8000),
                                      bench_entry("slimadam-gpt-3m", "slimadam", state_bytes=4100, ratio=0.9)])
    c = load([tmp_path / "b.json"])
    rows = {r["optimizer"]: r for r in memory_rows(c)}
    assert rows["adamw"]["ratio"] == 2.0 and rows["slimadam"]["vs_adamw"] == pytest.approx(4100 / 8000)
    assert rows["slimadam"]["peak_bytes"] == 3 * 4000 + 4100
    st = {r["optimizer"]: r for r in step_time_rows(c)}
    assert st["slimadam"]["ratio"] == 0.9


def test_snr_rows_from_rules_file_and_from_a_bare_record(tmp_path):
    rec = _snr_record()
    rec.save(tmp_path / "a" / "snr.json")
    loaded = load([tmp_path / "a" / "snr.json"]).snr[0].data
    derive_rules(loaded, 1.0, depth_average=True).save(tmp_path / "a" / "rules.json")
    with_rules = snr_rows(load([tmp_path / "a"]))
    q = next(r for r in with_rules if r["layer_type"] == "query")
    assert q["chosen"] == "fan_in" and q["layers"] == 2 and q["fan_in"] == pytest.approx((5.0 + 3.0) / 2)
    assert "cutoff 1.0" in q["origin"] and len(q["sources"]) == 2  # rules file + the SNR file it came from
    bare = snr_rows(Collection(snr=[Item("x/snr.json", rec)]))
    up = next(r for r in bare if r["layer_type"] == "mlp_up")
    assert up["chosen"] == "fan_out" and "derived here" in up["origin"] and up["commit"] == "feedbeef"


def test_every_section_present_and_every_row_has_a_source(tmp_path):
    _sweep(tmp_path)
    write_bench(tmp_path / "bench.json", [bench_entry("adamw-gpt-3m", "adamw"), bench_entry(
        "digits-adamw", "adamw", kind="training", task="digits", preset="tiny", lr=0.01, steps=10,
        loss_at_step={"0": 2.3, "9": 0.5}, final_val_loss=0.6, diverged=False)])
    c = load([tmp_path])
    secs = {s.key: s for s in build_sections(c)}
    assert set(secs) == {"memory", "lr", "claims", "steps", "training", "snr", "step_time", "environment"}
    assert secs["snr"].text  # says what would fill it
    for s in secs.values():
        for t in s.tables:
            assert all(r.get("sources") for r in t.rows), (s.key, t.title)


def test_source_index_compresses_ranges():
    idx = SourceIndex(["a", "b", "c", "d", "e"])
    assert idx.ref(["a", "b", "c", "e"]) == "[1-3, 5]"
    assert idx.ref(["zzz"]) == ""


def test_write_report_markdown_pngs_and_json(tmp_path):
    _sweep(tmp_path)
    write_bench(tmp_path / "bench.json", [bench_entry("adamw-gpt-3m", "adamw")])
    written = write_report(load([tmp_path]), tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    for title in ("## Memory", "## Loss vs learning rate", "## Loss vs step", "## SNR per layer type",
                  "## Step time", "## Environment", "## Sources"):
        assert title in text
    assert "diverged 1/2" in text and "| src" in text
    assert written.images and all(p.endswith(".png") for p in written.images)
    assert "](lr-gpt-tiny-steps-10.png)" in text
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["format"] == "slimbench.report" and len(data["sources"]) == 17
    # the report's own output is not read back as input
    assert load([tmp_path]).skipped == []


def test_cli_report(tmp_path, capsys):
    _sweep(tmp_path)
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "r"), "--no-plots", "--within", "5"]) == 0
    out = capsys.readouterr().out
    assert "Best learning rate and robustness" in out and "wrote" in out
    assert not list((tmp_path / "r").glob("*.png"))
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 2
    assert "no result files" in capsys.readouterr().err


def test_report_replaces_planted_symlinks_instead_of_writing_through_them(tmp_path):
    _sweep(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("report.md", ".report.md.tmp", "report.json", "lr-gpt-tiny-steps-10.png"):
        (out / name).symlink_to(victim)
    written = write_report(load([tmp_path / "sweep"]), out)
    assert victim.read_text() == "precious"
    assert not (out / "report.md").is_symlink() and (out / "report.md").read_text().startswith("# slimbench report")
    assert not (out / "lr-gpt-tiny-steps-10.png").is_symlink()
    assert (out / "lr-gpt-tiny-steps-10.png").read_bytes()[:4] == b"\x89PNG" and written.images


def test_a_full_disk_leaves_no_partial_report_file(tmp_path, monkeypatch, capsys):
    import errno

    import slimbench.io as sio

    _sweep(tmp_path)
    real = sio.write_atomic

    def full_at_png(path, data):  # the disk fills while the first plot is written
        if str(path).endswith(".png"):
            def half(f):
                f.write(b"\x89PNG partial")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, half)
        return real(path, data)

    monkeypatch.setattr(sio, "write_atomic", full_at_png)
    monkeypatch.setattr("slimbench.report.plots.write_atomic", full_at_png)
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'r'}/") and err.endswith(".png: No space left on device\n")
    assert list((tmp_path / "r").iterdir()) == []  # no 0-byte PNG, no temp file, no report.md


def test_report_and_compare_skip_mistyped_run_files_with_one_warning(tmp_path, capsys):
    folder = _sweep(tmp_path)
    bad = sorted(folder.glob("*.json"))[0]
    d = json.loads(bad.read_text())
    d["val"] = [{"step": "zero", "loss": 1.0}]
    bad.write_text(json.dumps(d))
    assert main(["report", str(folder), "--out", str(tmp_path / "r"), "--no-plots", "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: skipped {bad}: a 'slimbench.run' file with a missing or bad field: field 'val' must be "
                   "a list of {'step': int, 'loss': number or null}, got [{'step': 'zero', 'loss': 1.0}]"]
    assert main(["compare", str(folder), str(folder)]) == 0
    assert capsys.readouterr().err.splitlines() == err * 2  # once per side


def test_hand_written_rules_are_named_by_file_derived_ones_by_cutoff(tmp_path):
    """Two hand-written rules files (an experiment's choices) must not share the name "SNR rules": each is
    named by its file; a file derived from an SNR record (it has a cutoff) keeps "SNR rules, cutoff C"."""
    from slimbench.report.runs import rules_names
    from slimbench.rules import fingerprint, load_rules, save_rules

    a = save_rules(tmp_path / "emb-token.json", [{"match": "tok_emb.weight", "dims": [0]}])
    b = save_rules(tmp_path / "emb-embed.json", [{"match": "tok_emb.weight", "dims": [1]}])
    c = save_rules(tmp_path / "derived.json", [{"match": "embedding", "dims": [1], "snr": 3.0}],
                   cutoff=1.0, by="layer_type")
    items = [Item(str(p), load_rules(p)) for p in (a, b, c)]
    names = rules_names(items)
    assert names[fingerprint(items[0].data)] == "rules emb-token"
    assert names[fingerprint(items[1].data)] == "rules emb-embed"
    assert names[fingerprint(items[2].data)] == "SNR rules, cutoff 1.0, by layer type"
