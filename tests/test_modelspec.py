"""Any model from a --model string (slimbench.modelspec): presets with overrides, package.module:factory,
hf:<model_type> built offline on meta, and their CLI wiring in audit, profile, snr and rules --apply.
Tests that need transformers skip cleanly without it."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from slimbench.cli import main
from slimbench.tasks.presets import build_model
from slimbench.modelspec import lm_task, parse_sets, resolve_model


class SmallLM(nn.Module):
    """A causal-enough token model for factory tests: embedding -> linear head, logits (B, T, vocab)."""

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.up_proj = nn.Linear(width, 2 * width)
        self.lm_head = nn.Linear(2 * width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.relu(self.up_proj(self.embed(idx))))


def make_lm(vocab: int = 32, width: int = 16) -> nn.Module:
    return SmallLM(vocab, width)


def make_nothing() -> str:
    return "not a module"


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_set_grammar_is_json_else_string():
    assert parse_sets(["a=1", "b=true", "c=relu", "d=null", "e=[1, 2]", "f=0.5", "g=\"3\""]) == \
        {"a": 1, "b": True, "c": "relu", "d": None, "e": [1, 2], "f": 0.5, "g": "3"}
    with pytest.raises(ValueError, match="--set expects KEY=VALUE, got 'n_layer'"):
        parse_sets(["n_layer"])


def test_preset_overrides_are_type_checked():
    spec = resolve_model("gpt2-tiny", {"n_layer": 1})
    assert spec.name == "gpt2-tiny (n_layer=1)" and spec.info["n_layer"] == 1
    model = spec.build("meta")
    assert not any(".h.1." in n for n, _ in model.named_parameters())
    assert all(p.device.type == "meta" for p in model.parameters())
    with pytest.raises(ValueError, match=r"preset 'gpt2-tiny' has no setting 'n_layers'; did you mean n_layer"):
        resolve_model("gpt2-tiny", {"n_layers": 1})
    with pytest.raises(ValueError, match=r"n_layer must be int like its current value 2, got 2.5"):
        resolve_model("gpt2-tiny", {"n_layer": 2.5})
    with pytest.raises(ValueError, match=r"unknown model preset 'gpt9'.*hf:<model_type>.*package.module:factory"):
        resolve_model("gpt9")


def test_same_seed_same_weights_and_presets_keep_their_init():
    spec = resolve_model("gpt2-tiny")
    a, b = spec.build("cpu", seed=3), spec.build("cpu", seed=3)
    ref = build_model("gpt2-tiny", "cpu", seed=3)
    for (n, p), q, r in zip(a.named_parameters(), b.parameters(), ref.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r), n
    assert not torch.equal(spec.build("cpu", seed=4).transformer.wte.weight, a.transformer.wte.weight)


def test_factory_forms_and_errors(tmp_path):
    spec = resolve_model("test_modelspec:make_lm", {"width": 8})
    model = spec.build("meta")
    assert isinstance(model, SmallLM) and model.embed.weight.shape == (32, 8) and model.embed.weight.is_meta
    x = torch.randint(0, 32, (2, 5))
    real = spec.build("cpu")
    assert spec.lm_loss(real, x, x).shape == ()
    path = tmp_path / "user_model.py"
    path.write_text("import torch\ndef build(depth: int = 1):\n    return torch.nn.Sequential("
                    "*[torch.nn.Linear(4, 4) for _ in range(depth)])\n")
    assert len(resolve_model(f"{path}:build", {"depth": 3}).build("meta")) == 3
    errors = {
        "test_modelspec:make_lm|widht": "factory test_modelspec:make_lm has no setting 'widht'; did you mean width",
        "test_modelspec:make_lm|width=x": "width must be int like its current value 16, got 'x'",
        "test_modelspec:nope": "test_modelspec has no attribute 'nope'",
        "no_such_pkg.models:build": "cannot import module 'no_such_pkg.models'",
        "test_modelspec:make_nothing": "returned str, not a torch.nn.Module",
        f"{tmp_path / 'missing.py'}:build": "no such file",
    }
    for key, msg in errors.items():
        text, _, ov = key.partition("|")
        overrides = {ov.split("=")[0]: ov.split("=")[1] if "=" in ov else 1} if ov else {}
        with pytest.raises(ValueError) as e:
            resolve_model(text, overrides).build("meta")
        assert msg in str(e.value) and "\n" not in str(e.value), (key, str(e.value))


def test_audit_cli_on_a_factory_lists_intended_and_held_v(capsys):
    assert main(["audit", "--model", "test_modelspec:make_lm", "--set", "width=8", "--optimizers", "adamw,slimadam",
                 "--format", "json", "--details"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "test_modelspec:make_lm (width=8)" and out["model_info"]["kind"] == "factory"
    assert out["param_numel"] == 32 * 8 + 8 * 16 + 16 + 16 * 32
    rows = {r["name"]: r for r in out["slimadam_intent"]["parameters"]}
    assert set(rows) == {"embed.weight", "up_proj.weight", "up_proj.bias", "lm_head.weight"}
    assert all(r["intended_v_shape"] and r["actual_v_shape"] for r in rows.values())
    assert rows["up_proj.bias"]["actual_v_shape"] == [16]


def test_rules_apply_on_a_model(capsys, tmp_path):
    assert main(["rules", "--apply", "--model", "gpt2-tiny-paper"]) == 0
    out = capsys.readouterr().out
    assert "rules paper applied to gpt2-tiny-paper: 19 parameters" in out and "V shape" in out
    assert "transformer.h.1.mlp.mlp_proj.weight" in out
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"lm_head.weight": [0]}))
    assert main(["rules", "--apply", "--model", "test_modelspec:make_lm", "--rules", str(rules)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("lm_head.weight"))
    assert "1x32" in line  # V of (32, 32) reduced along dim 0
    assert "needs --model" in one_line_error(capsys, ["rules", "--apply"])
    assert "add --apply" in one_line_error(capsys, ["rules", "--model", "gpt2-tiny"])
    assert "give SNR_JSON" in one_line_error(capsys, ["rules"])


def test_paper_gpt2_preset_names_and_size():
    """The paper's reference GPT-2 small: bias-free, tied, split Q/K/V, its code's parameter names."""
    model = build_model("gpt2-small-paper", "meta")
    names = [n for n, _ in model.named_parameters()]
    assert sum(p.numel() for p in model.parameters()) == 124_373_760
    assert len(names) == 99 and not any(n.endswith(".bias") for n in names)
    assert names[:10] == ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
                          "transformer.h.0.attn.k_proj.weight", "transformer.h.0.attn.q_proj.weight",
                          "transformer.h.0.attn.v_proj.weight", "transformer.h.0.attn.output_proj.weight",
                          "transformer.h.0.ln_2.weight", "transformer.h.0.mlp.mlp_up.weight",
                          "transformer.h.0.mlp.mlp_proj.weight"]
    assert names[-1] == "transformer.ln_f.weight"
    assert model.lm_head.weight is model.transformer.wte.weight
    tiny = build_model("gpt2-tiny-paper", "cpu")
    x = torch.randint(0, 256, (2, 8))
    assert torch.isfinite(tiny(x, x))
    # residual projections get the scaled init, as in the reference code
    std = tiny.transformer.h[0].mlp.mlp_proj.weight.std().item()
    assert std < 0.02 / 1.5


# --- Hugging Face transformers ---------------------------------------------------------------------------

def test_transformers_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ValueError, match=r"pip install 'slimbench\[models\]'"):
        resolve_model("hf:gpt2")


@pytest.mark.parametrize("model_type,head,cls", [("gpt2", "causal-lm", "GPT2LMHeadModel"),
                                                  ("bert", "masked-lm", "BertForMaskedLM"),
                                                  ("t5", "seq2seq-lm", "T5ForConditionalGeneration"),
                                                  ("vit", "image-classification", "ViTForImageClassification")])
def test_hf_heads_build_on_meta(model_type, head, cls):
    pytest.importorskip("transformers")
    spec = resolve_model(f"hf:{model_type}")
    model = spec.build("meta")
    assert spec.info["head"] == head and type(model).__name__ == cls
    assert all(p.device.type == "meta" for p in model.parameters())
    assert spec.causal_lm == (head == "causal-lm")


def test_hf_config_overrides_are_checked(capsys):
    pytest.importorskip("transformers")
    model = resolve_model("hf:gpt2", {"n_layer": 2, "n_embd": 64, "n_head": 4}).build("meta")
    assert len(model.transformer.h) == 2 and model.transformer.wte.weight.shape[1] == 64
    assert "has no setting 'n_layers'; did you mean n_layer" in one_line_error(
        capsys, ["audit", "--model", "hf:gpt2", "--set", "n_layers=2"])
    assert "n_layer must be int" in one_line_error(capsys, ["audit", "--model", "hf:gpt2", "--set", "n_layer=two"])
    assert "unknown Hugging Face model_type 'gpt3'" in one_line_error(capsys, ["audit", "--model", "hf:gpt3"])
    assert "building --model hf:gpt2 (n_embd=30, n_head=4) failed" in one_line_error(
        capsys, ["audit", "--model", "hf:gpt2", "--set", "n_embd=30", "--set", "n_head=4"])
    assert "no masked-lm model" in one_line_error(capsys, ["audit", "--model", "hf:gpt2:masked-lm"])


def test_hf_gpt2_audit_json_details():
    """The issue's command: every parameter with its intended and held V shape, in today's JSON layout."""
    pytest.importorskip("transformers")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["audit", "--model", "hf:gpt2", "--optimizers", "adamw,slimadam", "--format", "json",
                     "--details"]) == 0
    out = json.loads(buf.getvalue())
    assert out["format"] == "slimbench.audit" and out["model"] == "hf:gpt2"
    assert out["model_info"]["class"] == "GPT2LMHeadModel" and out["param_numel"] == 124_439_808
    params = out["slimadam_intent"]["parameters"]
    assert len(params) == 148
    names = {p["name"] for p in params}
    assert {"transformer.h.0.mlp.c_proj.weight", "transformer.h.11.attn.c_attn.weight"} <= names
    assert all(p["intended_v_shape"] and p["actual_v_shape"] is not None for p in params)
    assert [o["status"] for o in out["optimizers"]] == ["ok", "ok"]


def test_profile_cli_on_hf_model(capsys):
    pytest.importorskip("transformers")
    assert main(["profile", "--model", "hf:gpt2", "--set", "n_layer=1", "--set", "n_embd=32", "--set", "n_head=2",
                 "--set", "vocab_size=64", "--optimizers", "adamw,slimadam", "--warmup", "1", "--seq-len", "8",
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["optimizer"]: r for r in out["optimizers"]}
    assert out["model"].startswith("hf:gpt2 (n_layer=1")
    assert rows["adamw"]["status"] == rows["slimadam"]["status"] == "ok"
    assert rows["slimadam"]["state_bytes"] < rows["adamw"]["state_bytes"]
    assert "not token ids" in one_line_error(capsys, ["profile", "--model", "hf:vit", "--optimizers", "adamw"])


def test_snr_refuses_a_masked_lm_and_a_small_vocab():
    pytest.importorskip("transformers")
    with pytest.raises(ValueError, match="masked-lm model, not a next-token predictor"):
        lm_task(resolve_model("hf:bert"))
    with pytest.raises(ValueError, match="--task must be one of gpt, linear-lm"):
        lm_task(resolve_model("hf:gpt2"), "vit")


@pytest.mark.realdata
def test_snr_cli_trains_an_hf_model_on_the_gpt_task(tmp_path, capsys):
    pytest.importorskip("transformers")
    from slimbench.snr.record import load_snr
    from slimbench.tasks.data import DataUnavailable, load_tokens

    try:
        vocab = load_tokens("shakespeare", "char").vocab_size
    except DataUnavailable as e:
        pytest.skip(str(e))
    small = ["--set", "n_layer=1", "--set", "n_embd=32", "--set", "n_head=2"]
    with pytest.raises(ValueError, match=f"embeds {vocab - 1} token ids but task 'gpt' has {vocab}"):
        lm_task(resolve_model("hf:gpt2", {**parse_sets(small[1::2]), "vocab_size": vocab - 1}))
    out = tmp_path / "snr.json"
    assert main(["snr", "--model", "hf:gpt2", *small, "--set", f"vocab_size={vocab}", "--task-set", "batch_size=4",
                 "--steps", "4", "--schedule", "every:2", "--no-progress", "--out", str(out)]) == 0
    rec = load_snr(out)
    assert rec.steps == [2, 4] and rec.run["task"]["model"]["spec"]["name"] == "hf:gpt2"
    assert rec.run["task"]["spec"]["batch_size"] == 4 and rec.run["task"]["dataset"]["name"] == "shakespeare"
    assert "transformer.h.0.mlp.c_fc.weight" in {p.name for p in rec.tracked}
    capsys.readouterr()
    assert "recipe setting 'n_layer'" in one_line_error(
        capsys, ["snr", "--model", "hf:gpt2", "--task-set", "n_layer=2", "--out", str(tmp_path / "x.json")])
