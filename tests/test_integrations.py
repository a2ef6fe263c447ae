"""slimbench.integrations: SlimAdam in Hugging Face's Trainer and in PyTorch Lightning, trained with
checkpoints, resumed from the middle checkpoint in a fresh process, final weights bit-identical to an
uninterrupted run. Skipped cleanly without the frameworks (pip install 'slimbench[models]')."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def _fresh_process(framework: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(HERE / "trainer_runs.py"), framework, *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_hf_trainer_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import trainer_runs as run

    from slimbench import SlimAdam

    # uninterrupted: the optimizers=(opt, None) route, checkpoints at steps 3 and 6
    trainer, full = run.train_hf(str(tmp_path / "a"), route="optimizers")
    opt = trainer.optimizer.optimizer  # accelerate's AcceleratedOptimizer wraps it
    assert isinstance(opt, SlimAdam) and trainer.state.global_step == run.STEPS
    held = {n: opt.state[p]["exp_avg_sq"].numel() for n, p in trainer.model.named_parameters()}
    assert held["transformer.h.0.mlp.c_proj.weight"] < trainer.model.transformer.h[0].mlp.c_proj.weight.numel()
    middle = tmp_path / "a" / f"checkpoint-{run.SAVE_STEPS}"
    assert (middle / "optimizer.pt").is_file()

    # resumed in a fresh process, through optimizer_cls_and_kwargs, from a differently initialised model
    result = tmp_path / "resumed.pt"
    _fresh_process("hf", str(tmp_path / "b"), str(result), "--resume", str(middle),
                   "--init-seed", "1", "--route", "factory")
    got = torch.load(result, weights_only=True)
    assert got["optimizer"] == "SlimAdam" and got["global_step"] == run.STEPS
    assert got["weights"].keys() == full.keys()
    different = [n for n in full if not torch.equal(full[n], got["weights"][n])]
    assert not different, f"resumed weights differ: {different[:5]}"
    # and the steps after the checkpoint did change the weights (the comparison is not vacuous)
    from safetensors.torch import load_file

    at_middle = load_file(str(middle / "model.safetensors"))
    assert not torch.equal(at_middle["transformer.h.0.mlp.c_fc.weight"], full["transformer.h.0.mlp.c_fc.weight"])


def test_lightning_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    pytest.importorskip("lightning")
    import trainer_runs as run

    from slimbench import SlimAdam

    trainer, full = run.train_lightning(str(tmp_path / "a"))
    module = trainer.lightning_module
    opt = trainer.optimizers[0]
    assert isinstance(opt, SlimAdam) and trainer.global_step == run.EPOCHS * run.STEPS_PER_EPOCH
    w = module.model.transformer.h[0].mlp.c_fc.weight
    assert opt.state[w]["exp_avg_sq"].numel() < w.numel()
    first = tmp_path / "a" / "epoch=0.ckpt"
    assert first.is_file()

    result = tmp_path / "resumed.pt"
    _fresh_process("lightning", str(tmp_path / "b"), str(result), "--resume", str(first), "--init-seed", "1")
    got = torch.load(result, weights_only=True)
    assert got["optimizer"] == "SlimAdam" and got["global_step"] == run.EPOCHS * run.STEPS_PER_EPOCH
    different = [n for n in full if not torch.equal(full[n], got["weights"][n])]
    assert not different, f"resumed weights differ: {different[:5]}"
    at_first = torch.load(first, weights_only=False)["state_dict"]  # Lightning's own checkpoint format
    name = "model.transformer.h.0.mlp.c_fc.weight"
    assert not torch.equal(at_first[name], full[name])
