"""Rules: layer types from names, dims aliases, resolution order, clear errors, the rules file format."""
from __future__ import annotations

import json

import pytest

from slimbench import SlimAdam
from slimbench.io import FormatError
from slimbench.layers import dims_label, layer_type, parse_dims
from slimbench.rules import fingerprint, load_rules, resolve, save_rules


@pytest.mark.parametrize("name, shape, kind", [
    ("blocks.0.attn.q.weight", (8, 8), "query"),
    ("model.layers.3.self_attn.k_proj.weight", (8, 8), "key"),
    ("model.layers.3.self_attn.v_proj.weight", (8, 8), "value"),
    ("model.layers.3.self_attn.o_proj.weight", (8, 8), "attn_out"),
    ("transformer.h.0.attn.c_attn.weight", (24, 8), "qkv_fused"),
    ("encoder.layers.0.self_attn.in_proj_weight", (24, 8), "qkv_fused"),
    ("transformer.h.0.attn.c_proj.weight", (8, 8), "attn_out"),
    ("transformer.h.0.mlp.c_proj.weight", (8, 32), "mlp_down"),
    ("transformer.h.0.mlp.c_fc.weight", (32, 8), "mlp_up"),
    ("model.layers.0.mlp.gate_proj.weight", (32, 8), "mlp_gate"),
    ("model.layers.0.mlp.up_proj.weight", (32, 8), "mlp_up"),
    ("model.layers.0.mlp.down_proj.weight", (8, 32), "mlp_down"),
    ("model.embed_tokens.weight", (100, 8), "embedding"),
    ("transformer.wte.weight", (100, 8), "embedding"),
    ("transformer.wpe.weight", (16, 8), "pos_embedding"),
    ("lm_head.weight", (100, 8), "head"),
    ("transformer.ln_f.weight", (8,), "norm"),
    ("model.layers.0.input_layernorm.weight", (8,), "norm"),
    ("blocks.0.attn.q.bias", (8,), "bias"),
    ("layers.0.0.conv1.weight", (8, 8, 3, 3), "conv"),
    ("cls_token", (1, 1, 8), "other"),
])
def test_layer_type(name, shape, kind):
    assert layer_type(name, shape) == kind


@pytest.mark.parametrize("spec, shape, dims", [
    ("none", (3, 4), ()), (None, (3, 4), ()), ("fan_out", (3, 4), (0,)), ("fan_in", (3, 4), (1,)),
    ("both", (3, 4), (0, 1)), ("fan_in", (8, 4, 3, 3), (1, 2, 3)), ("embed", (100, 8), (1,)),
    ("embed", (1, 16, 8), (2,)), ("token", (100, 8), (0,)), ([-1], (3, 4), (1,)), ([1, 0], (3, 4), (0, 1)),
    ("0,1", (3, 4), (0, 1)),
])
def test_parse_dims(spec, shape, dims):
    assert parse_dims(spec, shape) == dims


@pytest.mark.parametrize("spec, match", [
    ([2], "dim 2 does not exist for a tensor of shape \\(3, 4\\)"),
    ("fan_sideways", "unknown dims 'fan_sideways'"),
    ([0, 0], "repeat"),
])
def test_parse_dims_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_dims(spec, (3, 4))


def test_dims_label():
    assert dims_label((1, 2, 3), (8, 4, 3, 3)) == "fan_in"
    assert dims_label((0, 2), (8, 4, 3, 3)) == "0,2"


def test_resolution_order_exact_then_glob_then_type(tiny_gpt):
    named = [(n, p.shape) for n, p in tiny_gpt.named_parameters()]
    got = resolve(named, {"type:query": "fan_out", "blocks.*.attn.q.weight": "both",
                          "blocks.0.attn.q.weight": "fan_in"})
    assert got["blocks.0.attn.q.weight"].dims == (1,) and got["blocks.0.attn.q.weight"].rule == "blocks.0.attn.q.weight"
    assert got["blocks.1.attn.q.weight"].dims == (0, 1)
    assert got["blocks.0.ln1.weight"].dims == () and got["blocks.0.ln1.weight"].rule is None


def test_globs_never_touch_vectors(tiny_gpt):
    got = resolve([(n, p.shape) for n, p in tiny_gpt.named_parameters()], {"*": "both"})
    assert got["ln_f.weight"].dims == ()
    assert got["head.weight"].dims == (0, 1)


def test_rule_matching_nothing_names_closest_parameters(tiny_gpt):
    with pytest.raises(ValueError, match=r"rule 'blocks.0.attn.query.weight' matches no parameter.*"
                                         r"closest parameter names: blocks.0.attn.q.weight"):
        SlimAdam(tiny_gpt.named_parameters(), rules={"blocks.0.attn.query.weight": "fan_in"})


def test_rule_with_missing_dim_names_rule_and_parameter(tiny_gpt):
    with pytest.raises(ValueError, match=r"rule 'blocks.0.mlp.up.weight' for parameter 'blocks.0.mlp.up.weight' "
                                         r"\(shape \[32, 8\]\): dim 2 does not exist"):
        SlimAdam(tiny_gpt.named_parameters(), rules={"blocks.0.mlp.up.weight": [2]})


def test_unknown_layer_type(tiny_gpt):
    with pytest.raises(ValueError, match="unknown layer type"):
        SlimAdam(tiny_gpt.named_parameters(), rules={"type:queries": "fan_in"})


def test_fused_qkv_compressed_per_block():
    """Issue 11: a fused Q|K|V weight gets one V per block, each by its role (Q/K fan_in, V fan_out)."""
    got = resolve([("transformer.h.0.attn.c_attn.weight", (24, 8))], "paper")
    a = got["transformer.h.0.attn.c_attn.weight"]
    assert a.dims == () and [(b.block.role, b.label, b.v_shape) for b in a.blocks] == [
        ("query", "fan_in", (8, 1)), ("key", "fan_in", (8, 1)), ("value", "fan_out", (1, 8))]
    assert a.v_shape == (8 + 8 + 8,)


def test_fused_weight_without_readable_blocks_falls_back_and_says_why():
    a = resolve([("h.0.attn.c_attn.weight", (25, 8))], "paper")["h.0.attn.c_attn.weight"]
    assert a.dims == () and not a.blocks and "fused weight left uncompressed" in a.note and "25" in a.note


def test_rules_file_roundtrip(tmp_path, tiny_gpt):
    path = save_rules(tmp_path / "r.json", [{"match": "query", "dims": [1], "snr": {"0": 0.5, "1": 4.0}},
                                           {"match": "mlp_up", "dims": "fan_out"}], by="layer_type", cutoff=1.0)
    rs = load_rules(path)
    assert rs.by == "layer_type" and rs.cutoff == 1.0 and rs.entries[0]["snr"]["1"] == 4.0
    opt = SlimAdam(tiny_gpt.named_parameters(), rules=str(path))
    assert opt.assignments["blocks.1.attn.q.weight"].dims == (1,)
    assert opt.assignments["blocks.1.attn.q.weight"].rule == "type:query"
    assert opt.assignments["blocks.1.mlp.up.weight"].dims == (0,)
    assert fingerprint(path) == fingerprint(rs) != fingerprint("paper")


def test_name_rules_file_for_another_model_is_an_error(tmp_path, tiny_gpt):
    path = save_rules(tmp_path / "r.json", [{"match": "transformer.h.0.attn.c_attn.weight", "dims": [1]}])
    with pytest.raises(ValueError, match="matches no parameter"):
        SlimAdam(tiny_gpt.named_parameters(), rules=path)


@pytest.mark.parametrize("content, match", [
    ('{"format": "slimbench.rules", "version": 1, "rules": [', "not valid JSON"),
    ('{"format": "slimbench.rules", "version": 99, "rules": []}', "version 99 is newer"),
    ('{"format": "slimbench.snr", "version": 1}', "is a 'slimbench.snr' file, expected a 'slimbench.rules'"),
    ('[1, 2]', "not a slimbench file"),
    ('{"format": "slimbench.rules", "version": 1, "rules": [{"dims": [1]}]}', "rule #0 needs 'match' and 'dims'"),
    ('{"format": "slimbench.rules", "version": 1, "by": "layer_type", "rules": [{"match": "qq", "dims": [1]}]}',
     "unknown layer type 'qq'"),
])
def test_bad_rules_files(tmp_path, tiny_gpt, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(FormatError, match=match):
        SlimAdam(tiny_gpt.named_parameters(), rules=str(path))


def test_missing_rules_file(tiny_gpt, tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        SlimAdam(tiny_gpt.named_parameters(), rules=str(tmp_path / "nope.json"))


def test_saved_file_is_plain_json(tmp_path):
    path = save_rules(tmp_path / "r.json", [{"match": "a.weight", "dims": (1,)}])
    obj = json.loads(path.read_text())
    assert obj["format"] == "slimbench.rules" and obj["version"] == 1 and obj["rules"][0]["dims"] == [1]


def test_name_rules_file_with_wrong_shape_is_an_error(tmp_path, tiny_gpt):
    path = save_rules(tmp_path / "r.json", [{"match": "blocks.0.attn.q.weight", "dims": [1], "shape": [16, 16]}])
    with pytest.raises(ValueError, match=r"shape \[8, 8\] in this model but \[16, 16\] in the rules file"):
        SlimAdam(tiny_gpt.named_parameters(), rules=path)
