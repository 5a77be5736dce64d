"""A generic multiple-choice scorer: the summed log-probability of each ending after its context,
batched and sharded across ranks.

A batch runs each context once, left-padded, into a KV cache its endings share; attention masks
keep padding out of every real position, so a score does not depend on what shares its batch
(beyond the last bits of float rounding, which matrix kernels may vary with the batch's shape).
HellaSwag (`eval/hellaswag.py`) is one user; any "pick the likeliest ending" benchmark is another.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gpt124m.collectives import all_reduce_sum, model_config
from gpt124m.device import autocast
from gpt124m.kv_cache import KVCache
from gpt124m.model import IGNORE_INDEX


@dataclasses.dataclass(frozen=True)
class EncodedItem:
    """One multiple-choice item in tokens: a `context` shared by its `endings` (the tokens scored after it),
    and each ending's length in characters (the harness's normaliser)."""

    context: tuple[int, ...]
    endings: tuple[tuple[int, ...], ...]
    norm_chars: tuple[int, ...]
    label: int
    ind: int | str
    block_size: int

    @property
    def n_scored(self) -> tuple[int, ...]:
        return tuple(len(e) for e in self.endings)

    @property
    def rows(self) -> tuple[tuple[int, ...], ...]:
        """Context + ending j, left-truncated to block_size + 1 tokens (inputs + last target)."""
        return tuple((self.context + e)[-(self.block_size + 1) :] for e in self.endings)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous slice [start, stop) of n items; slices are disjoint and cover n."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    per = math.ceil(n / world_size)
    return min(rank * per, n), min((rank + 1) * per, n)


def score_items(
    model: nn.Module,
    encoded: Sequence[EncodedItem],
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    desc: str = "HellaSwag",
) -> np.ndarray:
    """Summed log-probability of each ending, float64 [items, max endings] (NaN where an item
    has fewer endings). Each rank scores its own slice; with torch.distributed running the
    slices are summed across ranks, so every rank returns the full table."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    n = len(encoded)
    width = max((len(e.endings) for e in encoded), default=0)
    table = torch.zeros((n, width), dtype=torch.float64, device=device)
    start, stop = shard_bounds(n, rank, world_size)
    # Longest first: the largest batch shows up (or runs out of memory) at once, and items of
    # similar length share batches, so little compute goes to padding.
    mine = sorted(
        range(start, stop),
        key=lambda i: -(len(encoded[i].context) + max(encoded[i].n_scored)),
    )
    # Every rank runs the same number of batches, each of exactly two forward passes: FSDP
    # gathers weights in every forward, and ranks must meet in each.
    n_batches = math.ceil(math.ceil(n / world_size) / batch_size)
    was_training = model.training
    model.eval()
    from tqdm.auto import tqdm

    bar = tqdm(
        total=stop - start,
        desc=desc if world_size == 1 else f"{desc} (rank {rank}/{world_size})",
        unit="item",
        disable=not progress or rank != 0,
    )
    try:
        with torch.no_grad(), autocast(device, autocast_dtype):
            for b in range(n_batches):
                chunk = mine[b * batch_size : (b + 1) * batch_size]
                forwards = 0
                if chunk:
                    items = [encoded[i] for i in chunk]
                    sums, forwards = _score_batch(model, items, device, autocast_dtype)
                    rows = [(i, j) for i in chunk for j in range(len(encoded[i].endings))]
                    where = torch.tensor(rows, device=device)
                    table[where[:, 0], where[:, 1]] = sums
                for _ in range(forwards, 2):
                    model(torch.zeros((1, 1), dtype=torch.long, device=device))
                bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    all_reduce_sum(table)
    result = table.cpu().numpy()
    for i, e in enumerate(encoded):
        result[i, len(e.endings) :] = np.nan
    return result


def _score_batch(model, items, device, autocast_dtype) -> tuple[torch.Tensor, int]:
    """Summed log-probabilities of every (item, ending) row of `items`, and the number of
    forward passes spent.

    Each context runs once, left-padded, filling a KV cache that its endings then share: the
    context's tokens are computed once instead of once per ending, and the vocabulary
    projection runs only where an ending token is predicted. Where the padded batch would
    not fit the block size (a context needs truncating), every row runs on its own instead.
    """
    config = model_config(model)
    ctx_len = max(len(e.context) for e in items)
    end_len = max(max(e.n_scored) for e in items) - 1  # the last ending token is never an input
    if ctx_len + end_len > config.block_size:
        return _score_rows(model, items, device), 1
    owner = torch.tensor([b for b, e in enumerate(items) for _ in e.endings], device=device)
    conts = [t for e in items for t in e.endings]
    ctx = torch.zeros((len(items), ctx_len), dtype=torch.long)
    ctx_mask = torch.zeros((len(items), ctx_len), dtype=torch.bool)
    for b, e in enumerate(items):
        ctx[b, ctx_len - len(e.context) :] = torch.tensor(e.context)
        ctx_mask[b, ctx_len - len(e.context) :] = True
    ctx, ctx_mask = ctx.to(device), ctx_mask.to(device)
    dtype = _activation_dtype(model, autocast_dtype)
    cache = KVCache(config, len(items), ctx_len, device, dtype)
    last, _ = model(ctx, attention_mask=ctx_mask, cache=cache, last_only=True)
    first = torch.tensor([t[0] for t in conts], device=device)
    logprobs = F.log_softmax(last[owner, 0].float(), dim=-1)
    sums = logprobs.gather(1, first[:, None]).squeeze(1).double()
    if end_len == 0:
        return sums, 1
    rows_cache = cache.expand(owner, ctx_len + end_len)
    del cache
    inputs = torch.zeros((len(conts), end_len), dtype=torch.long)
    targets = torch.full((len(conts), end_len), IGNORE_INDEX, dtype=torch.long)
    for k, t in enumerate(conts):
        inputs[k, : len(t) - 1] = torch.tensor(t[:-1])
        targets[k, : len(t) - 1] = torch.tensor(t[1:])
    inputs, targets = inputs.to(device), targets.to(device)
    mask = torch.cat([ctx_mask[owner], targets != IGNORE_INDEX], dim=1)
    logits, _ = model(inputs, attention_mask=mask, cache=rows_cache)
    return sums + _target_sums(logits, targets), 2


def _score_rows(model, items, device) -> torch.Tensor:
    """Every (context, ending) row on its own, right-padded: padding comes after every real
    token, so causal attention keeps it out of what the real positions compute."""
    rows = [(r, n) for e in items for r, n in zip(e.rows, e.n_scored, strict=True)]
    T = max(len(r) for r, _ in rows) - 1
    inputs = torch.zeros((len(rows), T), dtype=torch.long)
    targets = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    for k, (r, n) in enumerate(rows):
        L = len(r) - 1
        inputs[k, :L] = torch.tensor(r[:-1])
        targets[k, L - n : L] = torch.tensor(r[-n:])
    inputs, targets = inputs.to(device), targets.to(device)
    logits, _ = model(inputs)
    return _target_sums(logits, targets)


def _target_sums(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row sum (float64) of the log-probabilities of targets; IGNORE_INDEX is ignored."""
    scored = targets != IGNORE_INDEX
    logprobs = F.log_softmax(logits[scored].float(), dim=-1)
    picked = logprobs.gather(1, targets[scored].unsqueeze(1)).squeeze(1).double()
    rows = scored.nonzero()[:, 0]
    sums = torch.zeros(len(targets), dtype=torch.float64, device=targets.device)
    return sums.index_add_(0, rows, picked)


def _activation_dtype(model: nn.Module, autocast_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype attention keys and values come out in: what the KV cache must hold."""
    if autocast_dtype is not None and autocast_dtype != torch.float32:
        return autocast_dtype
    return next(model.parameters()).dtype
