"""Train a tiny model with SlimAdam under Hugging Face's Trainer or PyTorch Lightning, with checkpoints;
tests/test_integrations.py runs it in-process and, to resume from a checkpoint, as a fresh process:

    python tests/trainer_runs.py {hf,lightning} OUT_DIR RESULT.pt [--resume CHECKPOINT] [--init-seed N] [--route R]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

# HF: a tiny GPT-2 from its config, STEPS steps, checkpoint every SAVE_STEPS
STEPS, SAVE_STEPS, VOCAB, SEQ = 6, 3, 100, 16
# Lightning: slimbench's gpt2-tiny preset, EPOCHS epochs of STEPS_PER_EPOCH steps, a checkpoint per epoch
EPOCHS, STEPS_PER_EPOCH, BATCH = 2, 3, 4


def dataset() -> list[dict[str, torch.Tensor]]:
    """24 fixed sequences of random token ids (labels = inputs; the model shifts them)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (24, SEQ), generator=g)
    return [{"input_ids": x, "labels": x.clone()} for x in ids]


def train_hf(out_dir: str, *, resume: str | None = None, init_seed: int = 0, route: str = "factory"):
    """HF Trainer: STEPS steps (checkpoints every SAVE_STEPS); returns (trainer, final weights)."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from slimbench.integrations.hf import slimadam_optimizer_cls_and_kwargs, slimadam_trainer_optimizer

    torch.set_num_threads(1)
    torch.manual_seed(init_seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ))
    args = TrainingArguments(output_dir=out_dir, max_steps=STEPS, save_steps=SAVE_STEPS, save_strategy="steps",
                             per_device_train_batch_size=4, learning_rate=1e-2, weight_decay=0.1, warmup_steps=2,
                             lr_scheduler_type="cosine", seed=0, use_cpu=True, report_to=[], disable_tqdm=True,
                             logging_steps=1, dataloader_num_workers=0)
    if route == "factory":
        kw = {"optimizer_cls_and_kwargs": slimadam_optimizer_cls_and_kwargs(args, rules="paper")}
    else:
        kw = {"optimizers": (slimadam_trainer_optimizer(model, args, rules="paper"), None)}
    trainer = Trainer(model=model, args=args, train_dataset=dataset(), **kw)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, {n: p.detach().clone() for n, p in model.named_parameters()}


def train_lightning(out_dir: str, *, resume: str | None = None, init_seed: int = 0):
    """Lightning: EPOCHS epochs of STEPS_PER_EPOCH steps, a checkpoint after each epoch; returns (module, weights)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from slimbench.integrations.lightning import slimadam_optimizers
    from slimbench.tasks.presets import build_model

    torch.set_num_threads(1)

    class LitLM(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = build_model("gpt2-tiny", "cpu", seed=init_seed)

        def training_step(self, batch, batch_idx):
            (ids,) = batch
            return self.model(ids[:, :-1], ids[:, 1:])

        def configure_optimizers(self):
            return slimadam_optimizers(self, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, rules="paper",
                                       scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
                                           opt, EPOCHS * STEPS_PER_EPOCH))

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randint(0, 256, (STEPS_PER_EPOCH * BATCH, SEQ + 1), generator=g))
    module = LitLM()
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, deterministic=True, default_root_dir=out_dir,
                        callbacks=[ModelCheckpoint(dirpath=out_dir, every_n_epochs=1, save_top_k=-1,
                                                   filename="{epoch}")])
    trainer.fit(module, DataLoader(data, batch_size=BATCH, shuffle=False), ckpt_path=resume)
    return trainer, {n: p.detach().clone() for n, p in module.named_parameters()}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("framework", choices=("hf", "lightning"))
    p.add_argument("out_dir")
    p.add_argument("result")
    p.add_argument("--resume")
    p.add_argument("--init-seed", type=int, default=0)
    p.add_argument("--route", default="factory", choices=("factory", "optimizers"), help="hf: how SlimAdam gets in")
    a = p.parse_args(argv)
    if a.framework == "hf":
        trainer, weights = train_hf(a.out_dir, resume=a.resume, init_seed=a.init_seed, route=a.route)
        opt, step = getattr(trainer.optimizer, "optimizer", trainer.optimizer), trainer.state.global_step
    else:
        trainer, weights = train_lightning(a.out_dir, resume=a.resume, init_seed=a.init_seed)
        opt, step = trainer.optimizers[0], trainer.global_step
    torch.save({"weights": weights, "optimizer": type(opt).__name__, "global_step": step}, a.result)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main(sys.argv[1:]))
