"""The pretraining recipe: a preset (or a model to continue) on prepared token shards, through the
shared loop, leaving checkpoints and a final model directory. SFT's counterpart is `sft/runner.py`.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt124m.atomic import check_out_dir
from gpt124m.device import resolve_precision
from gpt124m.model import GPT
from gpt124m.train import autobatch, checkpointing, distributed
from gpt124m.train.checkpointer import (
    check_source_survives,
    latest_checkpoint,
    run_metadata,
    write_final_model,
)
from gpt124m.train.config import TrainConfig
from gpt124m.train.evaluators import Hooks, hellaswag_hook, sample_texts
from gpt124m.train.loggers import check_trackers
from gpt124m.train.trainer import fit


def pretrain(cfg: TrainConfig) -> dict[str, Any]:
    """Pretrain on prepared token shards; writes checkpoints and a final model directory."""
    from gpt124m.data.loader import TokenLoader, validation_batches, validation_budget

    cfg.validate()
    checkpointing.check_resume(cfg.resume)  # before any work, not after the model and data
    check_source_survives(cfg.out_dir, cfg.model, "--model")
    check_out_dir(cfg.out_dir)  # a file in the way: now, not after the model and data load
    check_trackers(tensorboard=cfg.tensorboard, wandb_project=cfg.wandb_project)
    info = distributed.init(cfg.device)
    try:
        model = initial_model(cfg)
        if cfg.seq_len > model.config.block_size:
            raise ValueError(
                f"--seq-len {cfg.seq_len} exceeds the model's block size {model.config.block_size}"
            )
        amp = resolve_precision(cfg.precision, info.device)
        cfg = autobatch.resolve(cfg, model, info, None if amp == torch.float32 else amp)
        loader = TokenLoader(
            cfg.data_dir,
            batch_size=cfg.micro_batch_size,
            seq_len=cfg.seq_len,
            rank=info.rank,
            world_size=info.world_size,
            seed=cfg.seed,
        )
        val_tokens = cfg.val_tokens
        if cfg.eval_every > 0:
            val_tokens = validation_budget(cfg.data_dir, cfg.val_tokens, say=info.is_main)
        hooks = Hooks(
            val_batches=lambda: validation_batches(
                cfg.data_dir,
                batch_size=cfg.micro_batch_size,
                seq_len=cfg.seq_len,
                max_tokens=val_tokens,
                rank=info.rank,
                world_size=info.world_size,
            ),
            samples=lambda m: sample_texts(
                m, cfg.sample_prompts, cfg.sample_max_new_tokens, cfg.seed
            ),
            hellaswag=hellaswag_hook(cfg),
        )
        summary = fit(
            cfg, model, loader, hooks=hooks, info=info, metadata={"data_dir": cfg.data_dir}
        )
        if info.is_main:
            from gpt124m.loading import load_model

            latest = latest_checkpoint(cfg.out_dir)
            model_dir = write_final_model(cfg.out_dir, load_model(latest), run_metadata(latest))
            summary["model_dir"] = str(model_dir)
        return summary
    finally:
        distributed.shutdown()


def initial_model(cfg: TrainConfig) -> GPT:
    """A preset at GPT-2 init (seeded), or an existing model to train further."""
    from gpt124m.config import PRESETS
    from gpt124m.loading import fresh_model, load_for_training

    if cfg.model in PRESETS:
        return fresh_model(cfg.model, dropout=cfg.dropout, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    return load_for_training(cfg.model, dropout=cfg.dropout)
