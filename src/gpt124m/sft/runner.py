"""The SFT recipe on the shared training loop: load the base, prepare the data, size the run from
the data set and epochs, optionally add LoRA, call `train.trainer.fit`, write the outputs.

Outputs in `out_dir`: `metrics.jsonl`, `curves.png`, `summary.json` and `checkpoints/` (from
`fit`), and `model/` (full fine-tuning, or LoRA merged) and `adapter/` (LoRA, peft format).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpt124m.atomic import atomic_write_text, check_out_dir
from gpt124m.device import resolve_precision
from gpt124m.model import GPT
from gpt124m.sft import data as sft_data
from gpt124m.sft.config import SFTConfig
from gpt124m.sft.template import format_prompt
from gpt124m.train import autobatch, checkpointing, distributed
from gpt124m.train.checkpointer import (
    check_source_survives,
    latest_checkpoint,
    run_metadata,
    write_final_model,
)
from gpt124m.train.config import AUTO
from gpt124m.train.evaluators import Hooks, hellaswag_hook
from gpt124m.train.loggers import check_trackers
from gpt124m.train.trainer import fit

log = logging.getLogger(__name__)

VAL_TOKENS_CAP = 1_048_576  # the seed's budget per evaluation, in tokens padded to the block
VAL_SHARE = 3  # validation reads at most a third of the tokens trained on


def load_base(source: str, *, dropout: float = 0.0, seed: int = 0) -> GPT:
    """The model to tune: a model directory / hub id, or a preset name (random init)."""
    from gpt124m.config import PRESETS
    from gpt124m.loading import fresh_model, load_for_training

    if source in PRESETS:
        return fresh_model(source, dropout=dropout, seed=seed)
    return load_for_training(source, dropout=dropout)


def resolve(cfg: SFTConfig, n_train: int, seq_len: int, world_size: int) -> SFTConfig:
    """The concrete TrainConfig values for `fit`: padded length, batch in tokens, steps, warmup."""
    micro = cfg.micro_batch_size or cfg.batch_size // world_size
    if micro == AUTO:  # chosen by trial once the model is final (autobatch, in sft())
        if cfg.batch_size % world_size:
            raise ValueError(
                f"--batch-size {cfg.batch_size} is not divisible by the world size {world_size}"
            )
    elif micro < 1 or cfg.batch_size % (micro * world_size):
        raise ValueError(
            f"--batch-size {cfg.batch_size} is not divisible by micro-batch x world size = "
            f"{micro} x {world_size}"
        )
    max_steps = cfg.max_steps or sft_data.steps_for(n_train, cfg.epochs, cfg.batch_size)
    warmup = cfg.warmup_steps
    if warmup is None:
        warmup = math.ceil(cfg.warmup_fraction * max_steps)
    val_tokens = cfg.val_tokens
    if val_tokens is None:
        val_tokens = auto_val_tokens(max_steps, cfg.batch_size * seq_len, cfg.eval_every)
    return dataclasses.replace(
        cfg,
        seq_len=seq_len,
        micro_batch_size=micro,
        total_batch_tokens=cfg.batch_size * seq_len,
        max_steps=max_steps,
        warmup_steps=warmup,
        val_tokens=val_tokens,
    )


def auto_val_tokens(max_steps: int, step_tokens: int, eval_every: int) -> int:
    """The default budget of one evaluation: VAL_TOKENS_CAP, or less on a short run, so that all
    its evaluations together read at most 1/VAL_SHARE of the tokens it trains on (forward only,
    so about a ninth of its compute). The seed's 17,551-step run keeps the cap; a 10-step LoRA
    run validates on one batch, not on its whole validation split twice."""
    if eval_every <= 0:
        return VAL_TOKENS_CAP
    evaluations = 1 + max_steps // eval_every + (1 if max_steps % eval_every else 0)
    return max(1, min(VAL_TOKENS_CAP, max_steps * step_tokens // (VAL_SHARE * evaluations)))


def _describe(cfg: SFTConfig, run: SFTConfig, data: sft_data.SFTData, world_size: int) -> None:
    """Log what sizes the run: the step count and where it came from, and the validation."""
    n = len(data.train)
    if cfg.max_steps:
        epochs = run.max_steps * cfg.batch_size / n
        steps = (
            f"{run.max_steps:,} steps (--max-steps; {epochs:.3g} epochs of batch {cfg.batch_size})"
        )
    else:
        steps = f"{cfg.epochs:g} epochs x {n:,} examples / batch {cfg.batch_size} -> {run.max_steps:,} steps"
    log.info(
        "SFT (%s): %s examples, %s, warmup %d, lr %.2e -> %.2e",
        cfg.method,
        f"{n:,}",
        steps,
        run.warmup_steps,
        run.max_lr,
        run.min_lr,
    )
    if not run.eval_every or not data.val:
        return
    per_step = min(run.micro_batch_size, len(data.val) // world_size) * world_size
    if per_step < 1:
        return
    steps = sft_data.validation_steps(len(data.val), per_step, run.seq_len, run.val_tokens)
    scaled = cfg.val_tokens is None and run.val_tokens < VAL_TOKENS_CAP
    log.info(
        "validation: %d of %d examples per evaluation (budget %s tokens%s)",
        steps * per_step,
        len(data.val),
        f"{run.val_tokens:,}",
        ", scaled down to this short run; --val-tokens to choose" if scaled else "",
    )


def sample_responses(
    model: nn.Module, instructions: list[str], template: str, max_new_tokens: int
) -> list[str]:
    """Greedy responses to fixed instructions, so samples are comparable across steps."""
    from gpt124m.generate import GenerationConfig, generate
    from gpt124m.sft.lora import unwrap
    from gpt124m.tokenizer import get_tokenizer

    gpt = unwrap(model)
    tok = get_tokenizer()
    texts = []
    for instruction in instructions:
        ids = tok.encode(format_prompt(instruction, template=template))
        budget = min(max_new_tokens, gpt.config.block_size - len(ids))
        if budget < 1:
            texts.append(f"{instruction} -> (prompt fills the block)")
            continue
        new = generate(gpt, [ids], GenerationConfig(max_new_tokens=budget))[0]
        texts.append(f"{instruction} -> {tok.decode(new)}")
    return texts


def _val_hook(cfg: SFTConfig, val: list, info: distributed.Dist):
    per_rank = min(cfg.micro_batch_size, len(val) // info.world_size)
    if per_rank < 1:
        if val:
            log.warning(
                "%d validation example(s) for %d ranks: no validation", len(val), info.world_size
            )
        return None

    def batches():
        return sft_data.padded_validation_batches(
            val,
            batch_size=per_rank,
            seq_len=cfg.seq_len,
            max_tokens=cfg.val_tokens,
            rank=info.rank,
            world_size=info.world_size,
        )

    return batches


def sft(cfg: SFTConfig) -> dict[str, Any]:
    """Run instruction tuning as `cfg` says; returns the run summary (with output paths)."""
    cfg.validate()
    checkpointing.check_resume(cfg.resume)  # before loading the model and the data
    check_source_survives(cfg.out_dir, cfg.base, "--base")
    check_out_dir(cfg.out_dir)  # a file in the way: now, not after the model and data load
    check_trackers(tensorboard=cfg.tensorboard, wandb_project=cfg.wandb_project)
    info = distributed.init(cfg.device)
    try:
        model = load_base(cfg.base, dropout=cfg.dropout, seed=cfg.seed)
        block = model.config.block_size
        max_len = cfg.seq_len or block
        if max_len > block:
            raise ValueError(f"--seq-len {max_len} exceeds the model's block size {block}")
        data = sft_data.prepare(
            cfg.data,
            template=cfg.template,
            max_len=max_len,
            pad_to=cfg.pad_to,
            val_fraction=cfg.val_fraction,
            split_seed=cfg.split_seed,
        )
        run_cfg = resolve(cfg, len(data.train), data.seq_len, info.world_size)
        if cfg.method == "lora":
            from gpt124m.sft.lora import apply_lora

            torch.manual_seed(cfg.seed)  # the adapters' initialisation
            model = apply_lora(
                model,
                r=cfg.lora_r,
                alpha=cfg.lora_alpha,
                dropout=cfg.lora_dropout,
                targets=cfg.lora_targets,
                base_name=cfg.base,
            )
        amp = resolve_precision(run_cfg.precision, info.device)
        run_cfg = autobatch.resolve(run_cfg, model, info, None if amp == torch.float32 else amp)
        if info.is_main:
            _describe(cfg, run_cfg, data, info.world_size)
        batches = sft_data.SFTBatches(
            data.train,
            batch_size=run_cfg.micro_batch_size,
            seq_len=data.seq_len,
            rank=info.rank,
            world_size=info.world_size,
            seed=cfg.seed,
        )
        hooks = Hooks(
            val_batches=_val_hook(run_cfg, data.val, info),
            samples=lambda m: sample_responses(
                m, cfg.sample_prompts, cfg.template, cfg.sample_max_new_tokens
            ),
            hellaswag=hellaswag_hook(run_cfg),
        )
        metadata = {"sft": {"template": cfg.template, "method": cfg.method, "data": data.stats}}
        summary = fit(run_cfg, model, batches, hooks=hooks, info=info, metadata=metadata)
        summary["data"] = data.stats
        if info.is_main:
            atomic_write_text(
                Path(cfg.out_dir) / "summary.json", json.dumps(summary, indent=2) + "\n"
            )
            summary.update(_write_outputs(run_cfg, model, data))
        return summary
    finally:
        distributed.shutdown()


def _write_outputs(cfg: SFTConfig, model: nn.Module, data: sft_data.SFTData) -> dict[str, str]:
    """model/ (full, or LoRA merged) and adapter/ (LoRA); both carry the run's metadata."""
    from gpt124m.sft import lora

    out = Path(cfg.out_dir)
    latest = latest_checkpoint(out)
    metadata = run_metadata(latest)
    paths: dict[str, str] = {}
    if cfg.method == "lora":
        paths["adapter_dir"] = str(lora.save_adapter(model, out / "adapter"))
        if not cfg.merge:
            return paths
        probe_examples = (data.val or data.train)[: cfg.micro_batch_size]
        probe, _ = sft_data.make_batch(probe_examples, data.seq_len)
        gpt, diff = lora.merge(model, probe)
        log.info("merged LoRA into the base: max |logit difference| %.2e", diff)
        metadata["sft"] = {**metadata.get("sft", {}), "merge_max_abs_logit_diff": diff}
    else:
        from gpt124m.loading import load_model

        gpt = load_model(latest)  # the gathered weights, also when training was sharded
    paths["model_dir"] = str(write_final_model(out, gpt, metadata))
    return paths
