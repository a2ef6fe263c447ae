"""SNR record -> rules: averaging, choosing K, depth-averaging, saved fraction, transfer, bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from slimbench import SlimAdam
from slimbench.io import FormatError
from slimbench.layers import layer_type
from slimbench.rules import load_rules
from slimbench.snr.derive import (apply_rules, average_by_type, choose, derive_rules, mean_snr, role, saved_entries,
                                  sweep_cutoffs)
from slimbench.snr.record import ParamInfo, SNRRecord, load_snr
from slimbench.snr.tracker import track_snr
from tinymodels import TinyGPT, lm_loss


def record(snr: dict[str, dict[str, list]], steps: list[int], shapes: dict[str, tuple[int, ...]]) -> SNRRecord:
    params = [ParamInfo(n, s, layer_type(n, s), n in snr) for n, s in shapes.items()]
    return SNRRecord(params, steps, snr)


SHAPES = {"blocks.0.attn.q.weight": (8, 4), "blocks.1.attn.q.weight": (8, 4), "blocks.0.mlp.down.weight": (4, 16),
          "blocks.0.ln1.weight": (4,)}
REC = record({
    "blocks.0.attn.q.weight": {"0": [0.1, 0.5, 0.7], "1": [0.1, 3.0, 5.0], "0,1": [0.1, 0.2, 0.3]},
    "blocks.1.attn.q.weight": {"0": [0.1, 0.9, 0.9], "1": [0.1, 0.4, 0.6], "0,1": [0.1, 0.2, 0.3]},
    "blocks.0.mlp.down.weight": {"0": [9.0, 2.0, None], "1": [0.0, 0.5, None], "0,1": [0.0, 0.1, None]},
}, [1, 100, 200], SHAPES)


def test_mean_snr_over_steps_and_skip_transient():
    m = mean_snr(REC)
    assert m["blocks.0.attn.q.weight"]["1"] == pytest.approx((0.1 + 3.0 + 5.0) / 3)
    assert m["blocks.0.mlp.down.weight"]["0"] == pytest.approx(5.5)  # null (no state) is not a value
    m = mean_snr(REC, skip_steps=1)
    assert m["blocks.0.attn.q.weight"]["1"] == pytest.approx(4.0)
    assert m["blocks.0.mlp.down.weight"]["0"] == pytest.approx(2.0)


def test_skipping_everything_is_a_one_line_error():
    with pytest.raises(ValueError, match="no SNR measurements after step 200") as e:
        mean_snr(REC, skip_steps=200)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("snr, cutoff, expected", [
    ({"0": 0.5, "1": 3.0, "0,1": 2.0}, 1.0, "1"),
    ({"0": 0.5, "1": 0.9, "0,1": 0.2}, 1.0, None),  # best is below the cutoff: no compression
    ({"0": 1.0, "1": 1.0}, 1.0, None),  # must exceed, not equal
    ({"0": math.nan, "1": 2.0}, 1.0, "1"),  # NaN never wins
    ({"0": math.inf, "1": 2.0}, 1.0, "0"),  # V exactly constant along K
    ({"0": 2.0, "1": 2.0}, 1.0, "0"),  # tie: first listed
])
def test_choose(snr, cutoff, expected):
    assert choose(snr, cutoff) == expected


def test_derive_by_name():
    d = derive_rules(REC, 1.0)
    dims = {r.name: r.dims for r in d.rows}
    assert dims == {"blocks.0.attn.q.weight": (1,), "blocks.1.attn.q.weight": (), "blocks.0.mlp.down.weight": (0,)}
    assert [p.name for p in d.untracked] == ["blocks.0.ln1.weight"]  # 1-D stays uncompressed
    # saved: q0 fan_in keeps 8 of 32; down fan_out keeps 16 of 64; total V = 32 + 32 + 64 + 4
    assert d.saved_entries == 24 + 48 and d.total_entries == 132
    assert d.saved_fraction == pytest.approx(72 / 132)


def test_derive_by_type_averages_over_depth():
    d = derive_rules(REC, 1.0, depth_average=True)
    q = next(t for t in d.types if t.layer_type == "query")
    assert q.snr["fan_in"] == pytest.approx(((0.1 + 3.0 + 5.0) / 3 + (0.1 + 0.4 + 0.6) / 3) / 2)
    assert q.choice == "fan_in" and q.layers == ("blocks.0.attn.q.weight", "blocks.1.attn.q.weight")
    assert {r.name: r.dims for r in d.rows}["blocks.1.attn.q.weight"] == (1,)  # the type rule, not its own SNR
    assert [t.layer_type for t in d.types] == ["query", "mlp_down"]


def test_average_by_type_mixes_shapes_by_role():
    shapes = {"a.conv.weight": (4, 2, 3, 3), "b.conv.weight": (4, 2, 3, 3)}
    rec = record({n: {"0": [1.0], "1,2,3": [3.0], "0,1,2,3": [0.5]} for n in shapes}, [1], shapes)
    got = average_by_type(mean_snr(rec), rec.params)
    assert got == {"conv": {"fan_out": 1.0, "fan_in": 3.0, "both": 0.5}}
    assert role((1, 2, 3), 4) == "fan_in" and role((0,), 2) == "fan_out" and role((0, 1), 2) == "both"


@given(st.lists(st.floats(0, 50), min_size=6, max_size=6), st.lists(st.floats(0, 100), min_size=2, max_size=6))
def test_saved_fraction_falls_as_the_cutoff_rises(snrs, cutoffs):
    shapes = {"x.q.weight": (6, 4), "x.down.weight": (4, 12)}
    rec = record({"x.q.weight": {"0": [snrs[0]], "1": [snrs[1]], "0,1": [snrs[2]]},
                  "x.down.weight": {"0": [snrs[3]], "1": [snrs[4]], "0,1": [snrs[5]]}}, [1], shapes)
    points = sweep_cutoffs(rec, cutoffs)
    fractions = [p.saved_fraction for p in points]
    assert fractions == sorted(fractions, reverse=True)
    assert all(0 <= f < 1 for f in fractions)


def test_saved_entries():
    assert saved_entries((8, 4), (1,)) == 24 and saved_entries((8, 4), ()) == 0
    assert saved_entries((8, 4), (0, 1)) == 31 and saved_entries((6, 2, 3, 3), (1, 2, 3)) == 6 * 18 - 6


# ---- files, SlimAdam, transfer -----------------------------------------------------------------------

def tracked_record(model: torch.nn.Module, steps: int = 6) -> SNRRecord:
    opt = torch.optim.AdamW(model.named_parameters(), lr=1e-2)
    with track_snr(model, opt, schedule=2) as tracker:
        for s in range(steps):
            opt.zero_grad()
            lm_loss(model, s).backward()
            opt.step()
    return tracker.record()


@pytest.fixture(scope="module")
def snr_file(tmp_path_factory):
    torch.manual_seed(0)
    return tracked_record(TinyGPT()).save(tmp_path_factory.mktemp("snr") / "snr.json")


def test_rules_by_name_load_in_slimadam(snr_file, tmp_path):
    d = derive_rules(load_snr(snr_file), 0.5)
    path = d.save(tmp_path / "rules.json")
    rs = load_rules(path)
    assert rs.by == "name" and rs.cutoff == 0.5
    assert rs.provenance["snr_file"] == str(snr_file) and rs.provenance["derived"]["saved_fraction"] == d.saved_fraction
    entry = rs.entries[0]
    assert set(entry) >= {"match", "dims", "snr", "shape", "layer_type", "saved_fraction"}
    model = TinyGPT()
    opt = SlimAdam(model.named_parameters(), rules=str(path))
    assert {n: opt.assignments[n].dims for n in opt.assignments if n in {r.name for r in d.rows}} == \
        {r.name: r.dims for r in d.rows}


def test_rules_by_type_transfer_to_a_deeper_model(snr_file, tmp_path):
    d = derive_rules(load_snr(snr_file), 0.5, depth_average=True)
    path = d.save(tmp_path / "rules.json")
    deeper = TinyGPT()
    deeper.blocks.append(TinyGPT().blocks[0])  # a third block: names the SNR run never saw
    applied = apply_rules(path, [(n, p.shape) for n, p in deeper.named_parameters()])
    by_name = {r.assignment.name: r for r in applied.rows}
    q2 = by_name["blocks.2.attn.q.weight"].assignment
    choice = {t.layer_type: t.choice for t in d.types}["query"]
    assert q2.rule == "type:query" and q2.label == (choice or "none")
    assert by_name["blocks.2.attn.q.weight"].snr == {t.layer_type: t.snr for t in d.types}["query"]
    assert by_name["blocks.2.ln1.weight"].assignment.rule is None
    SlimAdam(deeper.named_parameters(), rules=str(path))  # loads directly too


def test_by_name_rules_for_a_different_model_is_a_one_line_error(snr_file, tmp_path):
    path = derive_rules(load_snr(snr_file), 0.5).save(tmp_path / "rules.json")
    other = TinyGPT(d=6)  # same names, other shapes
    with pytest.raises(FormatError, match="rules for a different model") as e:
        apply_rules(path, [(n, p.shape) for n, p in other.named_parameters()])
    assert "\n" not in str(e.value)
    renamed = [(n.replace("blocks", "layers"), p.shape) for n, p in TinyGPT().named_parameters()]
    with pytest.raises(FormatError, match="different model.*lacks"):
        apply_rules(path, renamed)


def test_snr_record_for_a_different_model_is_a_one_line_error(snr_file):
    rec = load_snr(snr_file)
    rec.check_model([(n, p.shape) for n, p in TinyGPT().named_parameters()])  # same model: fine
    with pytest.raises(FormatError, match="recorded for a different model") as e:
        rec.check_model([(n, p.shape) for n, p in TinyGPT(vocab=13).named_parameters()])
    assert "\n" not in str(e.value) and str(snr_file) in str(e.value)


@pytest.mark.parametrize("damage, match", [
    (lambda text: text[: len(text) // 2], "truncated"),
    (lambda text: text.replace('"version": 1', '"version": 7', 1), "newer"),
    (lambda text: text.replace('"slimbench.snr"', '"slimbench.rules"', 1), "expected a 'slimbench.snr' file"),
])
def test_bad_snr_files(snr_file, tmp_path, damage, match):
    bad = tmp_path / "bad.json"
    bad.write_text(damage(snr_file.read_text()))
    with pytest.raises(FormatError, match=match) as e:
        load_snr(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage, match", [
    (lambda obj: json.dumps(obj)[:-40], "truncated"),
    (lambda obj: json.dumps({**obj, "version": 2}), "newer"),
])
def test_bad_rules_files(snr_file, tmp_path, damage, match):
    path = derive_rules(load_snr(snr_file), 0.5).save(tmp_path / "rules.json")
    path.write_text(damage(json.loads(path.read_text())))
    with pytest.raises(FormatError, match=match) as e:
        apply_rules(path, [(n, p.shape) for n, p in TinyGPT().named_parameters()])
    assert "\n" not in str(e.value)


def test_bad_cutoff():
    with pytest.raises(ValueError, match="cutoff"):
        derive_rules(REC, -1.0)
