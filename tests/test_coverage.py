"""`slimbench coverage`: measured savings per architecture, and a reason for every fallback (issue 11)."""
from __future__ import annotations

import json

from slimbench.cli import main
from slimbench.memory.coverage import coverage


def test_rows_count_every_weight_and_explain_every_fallback():
    fused, paper = coverage(["gpt2-tiny-fused", "gpt2-tiny-paper"])
    assert fused.per_block == 2 and fused.fell_back == 0 and fused.saved_fraction > 0.97
    assert paper.fell_back == 0 and paper.compressed > 0
    for row in (fused, paper):
        assert not row.error
        assert sum(row.layouts.values()) == row.compressed + row.per_block + row.fell_back


def test_fallbacks_name_their_reason_and_bad_models_are_rows(tmp_path, capsys):
    out = tmp_path / "cov.json"
    models = "tests/tinymodels.py:tiny_convnet,tests/tinymodels.py:tiny_encoder,nope-model"
    assert main(["coverage", "--models", models, "--out", str(out)]) == 2
    doc = json.loads(out.read_text())
    conv, enc, bad = doc["rows"]
    assert enc["per_block"] == 1 and enc["layouts"]["nn.MultiheadAttention (out, in)"] == 1
    assert conv["fell_back"] >= 1 and all(f["reason"] for f in conv["fallbacks"])
    assert "conv" in " ".join(f["reason"] for f in conv["fallbacks"])
    assert bad["error"] and "nope-model" in bad["error"]


def test_paper_gpt2_configuration_saves_the_papers_share():
    """Issue 11 item 7: the paper's bias-free, tied GPT-2 small with its own names saves 99.88% of V."""
    row = coverage(["gpt2-small-paper"])[0]
    assert row.params == 124_373_760 and row.fell_back == 0
    assert round(100 * row.saved_fraction, 2) == 99.88
