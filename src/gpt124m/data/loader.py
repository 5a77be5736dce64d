"""Batches from prepared token shards: a resumable, rank-disjoint training loader and a
deterministic validation reader.

Training treats one epoch as the concatenation of all train shards in an order shuffled from
`(seed, epoch)`; the seed run's fixed order showed loss periodicity on FineWeb-Edu. Every rank
walks the same global position and takes its own `B*T` slice of each `world_size*B*T` step, so
ranks never overlap and together cover the epoch (up to the last partial step). The loader's
state is that global position plus the epoch and seed: the same on every rank, and enough to
replay exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from gpt124m.data.shards import load_shard, open_split

__all__ = [
    "TokenLoader",
    "load_shard",
    "token_batches",
    "validation_batches",
    "validation_budget",
]

log = logging.getLogger(__name__)
STATE_VERSION = 1


def _check_shape(batch_size: int, seq_len: int, rank: int, world_size: int) -> None:
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")


def _to_batch(buf: np.ndarray, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.from_numpy(np.asarray(buf, dtype=np.int64))
    x = ids[:-1].view(batch_size, seq_len)
    y = ids[1:].view(batch_size, seq_len)
    return x, y


class TokenLoader:
    """Training batches from the train shards of a prepared directory; resumable, rank-disjoint."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        _check_shape(batch_size, seq_len, rank, world_size)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.data_dir = Path(data_dir)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        manifest, self._shards = open_split(self.data_dir, "train")
        entries = [e for e in manifest["shards"] if e["split"] == "train"]
        self._names = [e["name"] for e in entries]
        self._lengths = np.array([len(s) for s in self._shards], dtype=np.int64)
        self._fingerprint = hashlib.sha256(
            json.dumps([[e["name"], e["tokens"], e["sha256"]] for e in entries]).encode()
        ).hexdigest()
        self.tokens_per_epoch = int(self._lengths.sum())
        self._step = world_size * batch_size * seq_len
        if self.tokens_per_epoch < self._step + 1:
            raise ValueError(
                f"{self.data_dir} has {self.tokens_per_epoch:,} train tokens; one step of "
                f"batch {batch_size} x seq {seq_len} x {world_size} ranks needs {self._step + 1:,}"
            )
        self._epoch = 0
        self._position = 0
        self._set_order()

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def steps_per_epoch(self) -> int:
        return (self.tokens_per_epoch - 1) // self._step

    def _set_order(self) -> None:
        rng = np.random.default_rng([self.seed, self._epoch])
        self._order = rng.permutation(len(self._shards))
        self._starts = np.concatenate([[0], np.cumsum(self._lengths[self._order])])

    def _read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start+n) of this epoch's shard stream, across shard boundaries."""
        pieces = []
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        while n > 0:
            shard = self._shards[self._order[i]]
            offset = start - int(self._starts[i])
            piece = shard[offset : offset + n]
            pieces.append(piece)
            n -= len(piece)
            start += len(piece)
            i += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 [B, T] on CPU, y = x shifted by one token."""
        if self._position + self._step + 1 > self.tokens_per_epoch:
            self._epoch += 1
            self._position = 0
            self._set_order()
        bt = self.batch_size * self.seq_len
        buf = self._read(self._position + self.rank * bt, bt + 1)
        self._position += self._step
        return _to_batch(buf, self.batch_size, self.seq_len)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """JSON-serialisable; identical on every rank (the position is global)."""
        i = int(np.searchsorted(self._starts, self._position, side="right")) - 1
        i = min(i, len(self._order) - 1)
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self._epoch,
            "position": self._position,
            "shard": self._names[self._order[i]],
            "shard_offset": self._position - int(self._starts[i]),
            "shard_order": [self._names[j] for j in self._order],
            "data": self._fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; its seed replaces the constructor's, and any rank may load
        any rank's state (they are equal)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unknown loader state version {state.get('version')!r}")
        if state.get("data") != self._fingerprint:
            raise ValueError(
                f"loader state was saved for different train shards than those in {self.data_dir}"
            )
        position = int(state["position"])
        if not 0 <= position <= self.tokens_per_epoch:
            raise ValueError(f"loader state position {position} is outside the epoch")
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._position = position
        self._set_order()


def token_batches(
    tokens: np.ndarray,
    *,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic sequential read of a token array: identical on every run; ranks get
    disjoint batches. `max_tokens` is the budget over all ranks (None: the whole array).
    Bad arguments raise at the call, not at the first batch."""
    _check_shape(batch_size, seq_len, rank, world_size)
    bt = batch_size * seq_len
    step = world_size * bt
    available = len(tokens) - 1
    budget = available
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
        if max_tokens > available:
            log.warning(
                "token budget %s is more than the %s tokens available: reading all of them",
                f"{max_tokens:,}",
                f"{available:,}",
            )
        budget = min(max_tokens, available)
    n_steps = budget // step
    if n_steps == 0:
        raise ValueError(
            f"{budget:,} tokens cannot fill one step of batch {batch_size} x seq {seq_len} x "
            f"{world_size} ranks ({step:,} tokens)"
        )

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(n_steps):
            start = i * step + rank * bt
            yield _to_batch(tokens[start : start + bt + 1], batch_size, seq_len)

    return batches()


def validation_budget(
    data_dir: str | os.PathLike, max_tokens: int | None, *, say: bool = True
) -> int | None:
    """`max_tokens`, or all the val split holds when that is less, said once (`say`) here
    rather than at every evaluation of a run."""
    _, shards = open_split(data_dir, "val")
    available = sum(len(s) for s in shards) - 1
    if max_tokens is None or max_tokens <= available:
        return max_tokens
    if say:
        log.warning(
            "validation: --val-tokens %s is more than the %s tokens of %s's val split; every "
            "evaluation reads all %s of them",
            f"{max_tokens:,}",
            f"{available:,}",
            data_dir,
            f"{available:,}",
        )
    return available


def validation_batches(
    data_dir: str | os.PathLike,
    *,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed token budget from the val shards, in order, via `token_batches`.
    A missing, corrupt or foreign data directory raises here, at the call."""
    _check_shape(batch_size, seq_len, rank, world_size)
    _, shards = open_split(data_dir, "val")
    if len(shards) == 1:
        tokens = shards[0]
    else:
        need = None if max_tokens is None else max_tokens + 1
        pieces, have = [], 0
        for shard in shards:
            if need is not None and have >= need:
                break
            pieces.append(shard if need is None else shard[: need - have])
            have += len(pieces[-1])
        tokens = np.concatenate(pieces)
    return token_batches(
        tokens,
        batch_size=batch_size,
        seq_len=seq_len,
        max_tokens=max_tokens,
        rank=rank,
        world_size=world_size,
    )
