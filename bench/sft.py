"""SFT training throughput on the `gpt2` preset, full fine-tuning and LoRA, against transformers'
GPT2LMHeadModel (+ peft for LoRA) on the same batches, in the same run.

The batches are real Alpaca examples (`../shared/data/alpaca_5000.json` by default), built by
`gpt124m.sft.data` exactly as `gpt124m sft` builds them: seed template, prompt masked, padded to a
fixed length. Throughput counts only real (non-padding) tokens. Both sides compute the loss the
same way (cross-entropy over all positions, -100 ignored), with the same AdamW, clipping,
precision and thread count; LoRA is r=8, alpha=8, dropout 0.05 on c_attn, c_proj, c_fc.

    python bench/sft.py [--batch 4] [--seq-len 256] [--steps 3] [--precision fp32 bf16]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _baseline import transformers_gpt2

from gpt124m.config import get_preset
from gpt124m.device import autocast as autocast_context
from gpt124m.model import GPT
from gpt124m.sft import data as sft_data
from gpt124m.sft.lora import apply_lora
from gpt124m.train.optim import build_adamw

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "alpaca_5000.json"
LORA = {"r": 8, "alpha": 8, "dropout": 0.05}


def hf_lora(model):
    import peft

    config = peft.LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,  # GPT-2's Conv1D stores weights transposed
    )
    return peft.get_peft_model(model, config)


def hf_loss(model, x, y):
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-100)


def ours_loss(model, x, y):
    return model(x, y, return_logits=False)[1]  # as the trainer calls it


class Stepper:
    """One model with its optimizer; `step(x, y)` runs and times one optimizer step."""

    def __init__(self, model, loss_fn, device, dtype):
        self.model, self.loss_fn, self.device, self.dtype = model, loss_fn, device, dtype
        self.opt = build_adamw(
            model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type=device.type
        )
        model.train()

    def step(self, x, y) -> float:
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.dtype):
            loss = self.loss_fn(self.model, x.to(self.device), y.to(self.device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def build(impl: str, method: str, config, device):
    torch.manual_seed(0)
    if impl == "transformers":
        model = transformers_gpt2(config)
        model = hf_lora(model) if method == "lora" else model
        return model.to(device), hf_loss
    model = GPT(config)
    if method == "lora":
        model = apply_lora(model, r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"])
    return model.to(device), ours_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="Alpaca-format JSON/JSONL")
    p.add_argument("--batch", type=int, default=4, help="examples per step")
    p.add_argument("--seq-len", type=int, default=256, help="block: longer examples dropped")
    p.add_argument("--pad-to", default="block", choices=["block", "longest"])
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--methods", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = torch.device(args.device)
    config = get_preset("gpt2")
    data = sft_data.prepare(
        args.data,
        template="seed",
        max_len=args.seq_len,
        pad_to=args.pad_to,
        val_fraction=0.0,
    )
    stream = sft_data.SFTBatches(data.train, batch_size=args.batch, seq_len=data.seq_len, seed=0)
    batches = [stream.next_batch() for _ in range(args.steps + 1)]
    real = [int((x != sft_data.PAD_ID).sum()) for x, _ in batches[1:]]  # no EOS inside inputs
    real_per_step = statistics.mean(real)
    padded = args.batch * data.seq_len
    print(
        f"gpt2 preset, {args.batch} Alpaca examples x T={data.seq_len} (pad to {args.pad_to}), "
        f"{real_per_step:.0f} real of {padded} tokens per step, {torch.get_num_threads()} "
        f"threads, {device}; median of {args.steps} timed steps, the two sides alternating"
    )
    print(
        f"{'precision':<10}{'method':<7}{'impl':<24}{'real tok/s':>11}{'s/step':>8}{'ours/HF':>9}"
    )
    for precision in args.precision:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        for method in args.methods:
            # both sides step in turn on each batch, so load from other processes hits both
            steppers = {
                impl: Stepper(*build(impl, method, config, device), device, dtype)
                for impl in ("transformers", "gpt124m")
            }
            times: dict[str, list[float]] = {impl: [] for impl in steppers}
            for i, (x, y) in enumerate(batches):
                for impl, stepper in steppers.items():
                    seconds = stepper.step(x, y)
                    if i > 0:  # the first batch warms up
                        times[impl].append(seconds)
            # per-step real tokens/s, median over steps: robust to another process's burst
            rate = {
                impl: statistics.median(n / t for n, t in zip(real, ts, strict=True))
                for impl, ts in times.items()
            }
            for impl, ts in times.items():
                name = impl + (" + peft" if method == "lora" else "")
                print(
                    f"{precision:<10}{method:<7}{name:<24}{rate[impl]:>11,.1f}"
                    f"{statistics.median(ts):>8.2f}{rate[impl] / rate['transformers']:>8.2f}x"
                )
            del steppers


if __name__ == "__main__":
    main()
