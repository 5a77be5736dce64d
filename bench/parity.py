"""Small-corpus parity: `gpt124m train` against a plain reference training loop.

Both train the same model (the `nano` shape: 4 layers, 4 heads, 128 dims, same init seed) on the
same tokens (tiny Shakespeare, GPT-2 BPE, first 90% of the characters to train, last 10% to
validate) with the same recipe: 600 steps of 16 x 128 tokens, AdamW (0.9, 0.95), weight decay 0.1
on matrices and embeddings, LR 1e-3 -> 1e-4 cosine after 50 warmup steps, clip 1.0, fp32. The
reference is written here, nanoGPT-style: every sequence of a batch starts at an independent
random offset. Both final models are scored by one evaluator defined here (every full 128-token
window of the validation split), and the trainer's own validation curve is printed beside the
reference's.

    python bench/parity.py [--text PATH] [--steps 600] [--seeds 1337] [--src DIR]

`--src DIR` runs the trainer from another source tree (e.g. an older checkout) for a
before/after comparison. `--work DIR` keeps every run, named by its step count, seed and trainer
source; a finished one there is read back, so seeds can run in parallel processes and be
summarised together afterwards. Skips (exit 0) when the text file is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from _shakespeare import DEFAULT_TEXT, prepare_shakespeare

from gpt124m.config import get_preset
from gpt124m.data.shards import VOCAB_SIZE, open_split
from gpt124m.loading import load_model
from gpt124m.model import GPT

MODEL = "nano"
BATCH, SEQ = 16, 128
MAX_LR, MIN_LR, WARMUP = 1e-3, 1e-4, 50
WEIGHT_DECAY, BETAS, CLIP = 0.1, (0.9, 0.95), 1.0
TOLERANCE = 0.03


def reference_lr(step: int, steps: int) -> float:
    if step < WARMUP:
        return MAX_LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - 1 - WARMUP)
    return MIN_LR + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (MAX_LR - MIN_LR)


@torch.no_grad()
def window_loss(model: torch.nn.Module, tokens: np.ndarray) -> float:
    """Mean next-token loss over every full SEQ-token window of `tokens`, in order."""
    model.eval()
    ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n = (len(ids) - 1) // SEQ
    total, count = 0.0, 0
    for first in range(0, n, BATCH):
        rows = range(first, min(first + BATCH, n))
        x = torch.stack([ids[r * SEQ : (r + 1) * SEQ] for r in rows])
        y = torch.stack([ids[r * SEQ + 1 : (r + 1) * SEQ + 1] for r in rows])
        logits = model(x)[0][..., :VOCAB_SIZE]  # the tokenizer's, whatever the padding
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="sum"
        )
        total, count = total + loss.item(), count + y.numel()
    model.train()
    return total / count


def train_reference(
    train: np.ndarray, val: np.ndarray, steps: int, seed: int, every: int, out: Path
) -> tuple[GPT, dict[int, float]]:
    """nanoGPT-style: each sequence from a random offset; AdamW, warmup + cosine, clipping.
    The final weights and curve go to `out`; a finished run there is read back."""
    weights, curve_file = out / "model.safetensors", out / "curve.json"
    if weights.is_file() and curve_file.is_file():
        model = GPT(get_preset(MODEL))
        safetensors.torch.load_model(model, weights)
        return model, {int(k): v for k, v in json.loads(curve_file.read_text()).items()}
    torch.manual_seed(seed)
    model = GPT(get_preset(MODEL))
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": matrices, "weight_decay": WEIGHT_DECAY},
        {"params": vectors, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=MAX_LR, betas=BETAS, eps=1e-8)
    data = torch.from_numpy(np.asarray(train, dtype=np.int64))
    generator = torch.Generator().manual_seed(seed)
    curve = {0: window_loss(model, val)}
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = reference_lr(step, steps)
        starts = torch.randint(0, len(data) - SEQ, (BATCH,), generator=generator)
        x = torch.stack([data[s : s + SEQ] for s in starts])
        y = torch.stack([data[s + 1 : s + SEQ + 1] for s in starts])
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        if (step + 1) % every == 0 or step + 1 == steps:
            curve[step + 1] = window_loss(model, val)
    out.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_model(model, weights)
    curve_file.write_text(json.dumps(curve))
    return model, curve


def train_ours(data: Path, out: Path, steps: int, seed: int, every: int, val_tokens: int, src):
    """`gpt124m train` with the recipe as flags, in a fresh process, as a user would run it.
    A finished run in `out` is read back."""
    flags = {
        "model": MODEL,
        "data-dir": data,
        "out-dir": out,
        "seq-len": SEQ,
        "micro-batch-size": BATCH,
        "total-batch-tokens": BATCH * SEQ,
        "max-steps": steps,
        "max-lr": MAX_LR,
        "min-lr": MIN_LR,
        "warmup-steps": WARMUP,
        "schedule": "cosine",
        "weight-decay": WEIGHT_DECAY,
        "beta1": BETAS[0],
        "beta2": BETAS[1],
        "grad-clip": CLIP,
        "precision": "fp32",
        "seed": seed,
        "eval-every": every,
        "val-tokens": val_tokens,
        "sample-every": 0,
        "checkpoint-every": 0,
        "log-every": 50,
    }
    cmd = [sys.executable, "-m", "gpt124m", "train"]
    for name, value in flags.items():
        cmd += [f"--{name}", str(value)]
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    if not (out / "model" / "model.safetensors").is_file():
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = {r["step"]: r["loss"] for r in records if r["kind"] == "val"}
    return load_model(out / "model"), curve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337])
    parser.add_argument("--every", type=int, default=100, help="validation every N steps")
    parser.add_argument("--src", help="run the trainer from this source tree (its src/ folder)")
    parser.add_argument("--no-reference", action="store_true", help="train only gpt124m")
    parser.add_argument(
        "--work",
        type=Path,
        help="keep the data and runs here, reusing finished runs (default: temp)",
    )
    args = parser.parse_args()
    if not args.text.is_file():
        print(f"skipped: {args.text} not found (pass --text PATH to tiny Shakespeare)")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="parity-"))
    data = prepare_shakespeare(args.text, work)
    train, val = (open_split(data, split)[1][0] for split in ("train", "val"))
    val_tokens = (len(val) - 1) // (BATCH * SEQ) * BATCH * SEQ  # all of it, in whole batches
    print(f"tiny Shakespeare: {len(train):,} train / {len(val):,} val tokens; {args.steps} steps")
    print(f"of {BATCH}x{SEQ} tokens = {args.steps * BATCH * SEQ / len(train):.1f} epochs\n")
    # A run from another source tree never stands in for this one's (or the reverse).
    ours_name = "ours"
    if args.src:
        ours_name += "-src" + hashlib.sha256(str(Path(args.src).resolve()).encode()).hexdigest()[:8]
    finals = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        ours_dir = work / f"{ours_name}-{args.steps}-s{seed}"
        ours, our_curve = train_ours(
            data, ours_dir, args.steps, seed, args.every, val_tokens, args.src
        )
        t1 = time.perf_counter()
        if args.no_reference:
            ref, ref_curve = ours, {}
        else:
            ref, ref_curve = train_reference(
                train, val, args.steps, seed, args.every, work / f"reference-{args.steps}-s{seed}"
            )
        t2 = time.perf_counter()
        print(f"seed {seed}: gpt124m train {t1 - t0:.0f} s, reference {t2 - t1:.0f} s")
        print(f"{'step':>6} {'gpt124m train':>14} {'reference':>10}  (the trainer's own evaluation")
        print(f"{'':>6} {'':>14} {'':>10}   reads the first {val_tokens // SEQ} windows)")
        for step in sorted(set(our_curve) | set(ref_curve)):
            a, b = our_curve.get(step, float("nan")), ref_curve.get(step, float("nan"))
            print(f"{step:>6} {a:>14.4f} {b:>10.4f}")
        finals.append((window_loss(ours, val), window_loss(ref, val)))
        print(f"final (one evaluator, all {(len(val) - 1) // SEQ} val windows): ", end="")
        print(f"gpt124m {finals[-1][0]:.4f}, reference {finals[-1][1]:.4f}\n")
    ours_mean = float(np.mean([a for a, _ in finals]))
    ref_mean = float(np.mean([b for _, b in finals]))
    gap = ours_mean - ref_mean
    verdict = "within" if abs(gap) <= TOLERANCE else "OUTSIDE"
    print(f"mean over {len(finals)} seed(s): gpt124m {ours_mean:.4f}, reference {ref_mean:.4f}")
    print(f"gap {gap:+.4f} nats: {verdict} the {TOLERANCE} tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
