"""The GPT-2 architecture in one file.

Pre-LayerNorm decoder blocks with fused qkv, causal scaled-dot-product attention, a 4x GELU(tanh)
MLP, biases everywhere and an lm_head tied to the token embedding. Parameter names follow GPT-2's
checkpoint layout so weights move in and out without renaming tables.

The vocabulary is padded to a multiple of 64 rows (50257 -> 50304) for faster matmuls, and that
is private: logits leave `forward` with exactly `config.vocab_size` columns, so no caller (loss,
sampling, HellaSwag, export) ever sees, scores or samples a padding id.

A `Cache` (gpt124m's is `kv_cache.KVCache`) makes decoding cost one token of compute per step.
`attention_mask` (1 = real token, 0 = padding) supports left-padded batches: positions count only
real tokens, and padded keys are never attended to, so each row computes exactly what it would
alone.

Training asks for no logits: `linear_cross_entropy` makes the head's output and the loss a block
of rows at a time, so the [tokens, vocabulary] logits never exist.

This file imports only torch: `gpt124m export` ships it verbatim beside the transformers adapter
(`hf/remote/modeling_gpt124m.py`), so an exported model runs this very network. The trunk
(`build_trunk`, `init_weights`, `positions_and_mask`, `run_trunk`) is what the two share.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # targets the loss skips (prompt and padding tokens in SFT), as in PyTorch


class Shape(Protocol):
    """What the blocks read from a config; gpt124m's `ModelConfig` and the exported
    `GPT124MConfig` both have it."""

    n_layer: int
    n_head: int
    n_embd: int
    dropout: float


class Cache(Protocol):
    """What `GPT.forward` reads and its attention writes while decoding: gpt124m's
    `kv_cache.KVCache`. (The exported model passes `run_trunk` a view of transformers'
    `DynamicCache` with only `update` and `advance`.)"""

    length: int  # tokens already cached

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor): ...

    def advance(self, n: int) -> None: ...


class CausalSelfAttention(nn.Module):
    def __init__(self, config: Shape):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.residual_scaled_init = True

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Cache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)
        dropout_p = self.dropout if self.training else 0.0
        if mask is None:
            # Causal when queries and keys start together (always without a cache: a plain bool,
            # so a compiled model whose T turned dynamic stays one graph); a single decode query
            # after cached keys sees them all.
            causal = cache is None or (T > 1 and k.size(2) == T)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: Shape):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual_scaled_init = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: Shape):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, mask=None, cache=None, layer=0):
        x = x + self.drop(self.attn(self.ln_1(x), mask, cache, layer))
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPT(nn.Module):
    """The language model: `config` is a `gpt124m.config.ModelConfig`."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = build_trunk(config, config.padded_vocab_size, config.block_size)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(lambda module: init_weights(module, config.n_layer))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        last_only: bool = False,
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return (logits, loss). Targets equal to IGNORE_INDEX (-100) are ignored by the loss.

        Logits have `config.vocab_size` columns: the padding rows never leave the model. With
        targets and `return_logits=False` (what training and evaluation ask for), logits are
        None and the loss never makes them (`linear_cross_entropy`), unless `lm_head` is wrapped
        or hooked: then it is called, so that what wraps or hooks it takes part.

        With `cache`, `idx` holds only the new tokens and `attention_mask` covers the cache plus
        them. `last_only` computes logits for the final position only (all that sampling needs).
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence length {past + T} exceeds the model's block size {self.config.block_size}"
            )
        pos, mask = positions_and_mask(attention_mask, B, T, past, idx.device)
        x = run_trunk(self.transformer, self.transformer.wte(idx), pos, mask, cache)
        if targets is None:
            return self._logits(x[:, -1:, :] if last_only else x), None
        vocab = self.config.vocab_size
        if not return_logits and self._plain_head():
            flat = x.flatten(0, -2)
            return None, linear_cross_entropy(flat, self.lm_head.weight, targets.reshape(-1), vocab)
        # The loss reads the padded head directly (not `_logits`' slice), so its gradient is
        # written at full width instead of being padded again by the slice's backward.
        padded = self.lm_head(x)
        loss = cross_entropy(padded.flatten(0, -2), targets.reshape(-1), vocab)
        return (padded[..., :vocab] if return_logits else None), loss

    def _plain_head(self) -> bool:
        """Whether the loss may read the head's weight instead of calling the module: not when
        something wraps it (a peft adapter on `lm_head`) or hooks it, which would be skipped."""
        head = self.lm_head
        return type(head) is nn.Linear and not (head._forward_hooks or head._forward_pre_hooks)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The head over every row, then only the real vocabulary's columns."""
        logits = self.lm_head(x)
        vocab = self.config.vocab_size
        return logits if logits.size(-1) == vocab else logits[..., :vocab]


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    vocab: int | None = None,
    block_rows: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Mean (or, with reduction="sum", total) next-token cross-entropy of `logits` [N, V] over the
    targets that are not IGNORE_INDEX, counting only the first `vocab` columns (default: all); the
    mean is nan when every target is ignored.

    Equal to `F.cross_entropy(logits[:, :vocab].float(), targets, ignore_index=IGNORE_INDEX)`,
    without its memory in eager mode: that makes an fp32 copy of the logits, keeps fp32
    log-probabilities for backward and returns an fp32 gradient (6.6 GB each at 32 x 1024 tokens
    of GPT-2's vocabulary). Here the softmax runs in fp32 a block of rows at a time, forward and
    backward, only the logits (in their own dtype) are kept, and the gradient comes back in that
    dtype. `block_rows` bounds the temporaries: by default 2048 rows on accelerators (400 MB in
    fp32 at GPT-2's vocabulary, few kernel launches) and on the CPU an fp32 block of about 2 MB,
    which stays in cache. Under `torch.compile` it is that very `F.cross_entropy`: Inductor fuses
    the cast into its kernels and keeps only per-row statistics for backward. Training does not
    need the logits at all: `linear_cross_entropy` never makes them.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    vocab = logits.size(-1) if vocab is None else vocab
    if torch.compiler.is_compiling():
        return F.cross_entropy(
            logits[:, :vocab].float(), targets, ignore_index=IGNORE_INDEX, reduction=reduction
        )
    if block_rows is None:
        on_cpu = logits.device.type == "cpu"
        block_rows = max(1, (2 << 20) // (4 * vocab)) if on_cpu else 2048
    return _CrossEntropy.apply(logits, targets, vocab, block_rows, reduction == "mean")


class _CrossEntropy(torch.autograd.Function):
    """Forward keeps only the logits; backward recomputes each block's softmax from them, which
    costs the same memory traffic as reading saved fp32 log-probabilities would."""

    @staticmethod
    def forward(
        ctx, logits: torch.Tensor, targets: torch.Tensor, vocab: int, rows: int, mean: bool
    ):
        per_row = torch.cat(
            [
                F.cross_entropy(
                    block[:, :vocab].float(), y, ignore_index=IGNORE_INDEX, reduction="none"
                )
                for block, y in zip(logits.split(rows), targets.split(rows), strict=True)
            ]
        )
        valid = targets != IGNORE_INDEX
        count = valid.sum() if mean else torch.ones((), device=logits.device, dtype=torch.long)
        ctx.save_for_backward(logits, torch.where(valid, targets, 0).unsqueeze(1), valid, count)
        ctx.vocab, ctx.rows = vocab, rows
        return per_row.sum() / count  # ignored rows are 0 in `per_row`

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, safe, valid, count = ctx.saved_tensors
        vocab, rows = ctx.vocab, ctx.rows
        scale = torch.where(valid, grad / count, 0.0).unsqueeze(1)  # d loss / d row's loss
        out = torch.empty_like(logits)
        out[:, vocab:] = 0  # padding columns
        for start in range(0, logits.size(0), rows):
            end = min(start + rows, logits.size(0))
            probs = torch.softmax(logits[start:end, :vocab].float(), dim=-1)
            probs.scatter_add_(1, safe[start:end], probs.new_full((end - start, 1), -1.0))
            out[start:end, :vocab] = probs.mul_(scale[start:end])
        return out, None, None, None, None


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab: int | None = None,
    block_rows: int | None = None,
) -> torch.Tensor:
    """`cross_entropy(x @ weight.T, targets, vocab)` (mean) without ever holding the logits.

    Each block of rows gets its logits, loss and, when training, its gradients at once, so only
    one block of [rows, weight rows] exists: for the 124M model at 32 x 1024 tokens that is
    0.6 GB instead of the 6.6 GB of bf16 logits and their gradient, and on the CPU it spares the
    page faults of fresh logits every step (at the quickstart's shape: 26 instead of 393 MB
    kept for backward, head and loss 1.2x faster; bench/loss.py). So each block's gradients are
    made in the forward, from the block at hand, and the backward only scales them by the loss's
    upstream gradient: with grad enabled they are made even if backward never runs (for a value
    alone, use `torch.no_grad()`), and there is no double backward. Under autocast the matmuls
    run in its dtype, as `F.linear` would; fp16 (whose gradients need the loss scale before they
    are cast) and `torch.compile` (Inductor fuses the plain loss) take the logits path.
    """
    vocab = weight.size(0) if vocab is None else vocab
    device = x.device.type
    amp = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if amp else x.dtype
    if torch.compiler.is_compiling() or dtype == torch.float16:
        return cross_entropy(F.linear(x, weight), targets, vocab)
    if block_rows is None:
        block_rows = 512 if device == "cpu" else 2048  # matmuls of full speed, ~0.1-0.6 GB
    grad = torch.is_grad_enabled()
    wants = (grad and x.requires_grad, grad and weight.requires_grad)
    return _LinearCrossEntropy.apply(x, weight, targets, vocab, block_rows, dtype, wants)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, vocab, rows, dtype, wants):
        with torch.autocast(x.device.type, enabled=False):
            xs, w = x.to(dtype), weight.to(dtype)
            n = xs.size(0)
            counted = (targets != IGNORE_INDEX).unsqueeze(1)
            safe = torch.where(counted, targets.unsqueeze(1), 0)
            keep = counted.float()
            total = torch.zeros((), device=x.device)
            logits = xs.new_empty((min(rows, n), w.size(0)))
            fp32 = dtype == torch.float32
            probs = logits if fp32 else logits.new_empty((len(logits), vocab), dtype=torch.float)
            grad_x = torch.empty_like(xs) if wants[0] else None
            grad_w = torch.zeros_like(w, dtype=torch.float) if wants[1] else None
            for start in range(0, n, rows):
                end = min(start + rows, n)
                z = torch.mm(xs[start:end], w.t(), out=logits[: end - start])
                p = z[:, :vocab] if fp32 else probs[: end - start].copy_(z[:, :vocab])
                p.sub_(p.amax(-1, keepdim=True))
                picked = p.gather(1, safe[start:end])
                sum_exp = p.exp_().sum(-1, keepdim=True)
                total += ((sum_exp.log() - picked) * keep[start:end]).sum()
                if not any(wants):
                    continue
                # d(sum of counted rows' losses)/d logits: softmax - one-hot, 0 for ignored rows
                p.mul_(keep[start:end] / sum_exp).scatter_add_(1, safe[start:end], -keep[start:end])
                if not fp32:
                    z[:, :vocab] = p
                z[:, vocab:] = 0  # padding columns
                if grad_x is not None:
                    torch.mm(z, w, out=grad_x[start:end])
                if grad_w is not None and fp32:
                    grad_w.addmm_(z.t(), xs[start:end])
                elif grad_w is not None:  # a bf16 product, summed over blocks in fp32
                    grad_w.add_(z.t() @ xs[start:end])
            count = counted.sum()
            ctx.save_for_backward(grad_x, grad_w, count)
            ctx.dtypes = x.dtype, weight.dtype
            return total / count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grad_x, grad_w, count = ctx.saved_tensors
        scale = grad / count.clamp(min=1)  # every target ignored: zero gradients, as torch's
        gx = None if grad_x is None else (grad_x * scale).to(ctx.dtypes[0])
        gw = None if grad_w is None else (grad_w * scale).to(ctx.dtypes[1])
        return gx, gw, None, None, None, None, None


def build_trunk(config: Shape, vocab_rows: int, block_size: int) -> nn.ModuleDict:
    """Embeddings, blocks and the final norm, under GPT-2's parameter names."""
    return nn.ModuleDict(
        dict(
            wte=nn.Embedding(vocab_rows, config.n_embd),
            wpe=nn.Embedding(block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd),
        )
    )


def init_weights(module: nn.Module, n_layer: int, std: float = 0.02) -> None:
    """GPT-2 init: N(0, std), residual projections scaled by (2 * n_layer) ** -0.5."""
    if isinstance(module, nn.Linear):
        if getattr(module, "residual_scaled_init", False):
            std *= (2 * n_layer) ** -0.5
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def positions_and_mask(
    attention_mask: torch.Tensor | None, B: int, T: int, past: int, device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positions of T new tokens after `past` cached ones, and the attention mask they need.

    No mask means plain causal attention (SDPA's fast path). A padded batch counts positions over
    real tokens only and hides padded keys.
    """
    if attention_mask is None:
        pos = torch.arange(past, past + T, device=device).unsqueeze(0)
        if past and T > 1:
            # SDPA's is_causal aligns queries to the first key; a chunk after cached tokens
            # needs them aligned to the last, so spell the mask out.
            full = torch.ones((1, past + T), dtype=torch.bool, device=device)
            return pos, _padded_causal_mask(full, T)
        return pos, None
    attention_mask = attention_mask.to(device=device, dtype=torch.bool)
    if attention_mask.shape != (B, past + T):
        raise ValueError(
            f"attention_mask must have shape {(B, past + T)} (cached + new tokens), "
            f"got {tuple(attention_mask.shape)}"
        )
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
    return pos, _padded_causal_mask(attention_mask, T)


def run_trunk(
    trunk: nn.ModuleDict,
    x: torch.Tensor,
    pos: torch.Tensor,
    mask: torch.Tensor | None,
    cache=None,
) -> torch.Tensor:
    """Token embeddings `x` through position embeddings, the blocks and the final norm.

    `cache` is anything with `update(layer, k, v) -> (k, v)` and `advance(n)`: a `KVCache`
    in gpt124m, a view of transformers' `DynamicCache` in the exported model.
    """
    x = trunk.drop(x + trunk.wpe(pos))
    for i, block in enumerate(trunk.h):
        x = block(x, mask, cache, i)
    if cache is not None:
        cache.advance(x.size(1))
    return trunk.ln_f(x)


def _padded_causal_mask(attention_mask: torch.Tensor, T: int) -> torch.Tensor:
    """Boolean [B, 1, T, S] mask: causal over the last T of S positions, padded keys hidden.

    A query always sees itself, so padding rows stay finite instead of softmaxing over nothing.
    """
    S = attention_mask.size(1)
    q_pos = torch.arange(S - T, S, device=attention_mask.device).unsqueeze(1)
    k_pos = torch.arange(S, device=attention_mask.device).unsqueeze(0)
    causal = k_pos <= q_pos
    mask = causal.unsqueeze(0) & attention_mask[:, None, :]
    mask |= (k_pos == q_pos).unsqueeze(0)
    return mask.unsqueeze(1)
