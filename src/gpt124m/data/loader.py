"""Batches from prepared token shards: a resumable, rank-disjoint training loader and a
deterministic validation reader.

Training draws each sequence of a step from an independent place in the data. Each epoch cuts
every train shard into windows of `seq_len + 1` tokens starting at a random per-epoch shift, and
visits all the epoch's windows (over every shard) in a seeded permutation, so the sequences of a
step come from all over the data and an epoch neither repeats the last one's order nor its cut
points. (Reading one contiguous span of `B*T` tokens per step, as earlier versions did, fills a
step with neighbouring windows of one passage, so its gradient speaks for one scene, and replays
the same windows in the same order on a corpus smaller than the run: on tiny Shakespeare it ended
~0.3 nats of validation loss behind, `bench/parity.py`.)

The permutation is computed per index (a keyed Feistel network), never materialised, so a
10B-token corpus costs no memory. Every rank walks the same global position and takes its own `B`
windows of each step's `world_size*B`, so ranks never overlap. The loader's state is that position
plus the epoch and seed: the same on every rank, and enough to replay exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from gpt124m.data.shards import load_shard, open_split

__all__ = [
    "TokenBatches",
    "TokenLoader",
    "WindowPermutation",
    "load_shard",
    "token_batches",
    "validation_batches",
    "validation_budget",
]

log = logging.getLogger(__name__)
STATE_VERSION = 2


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


_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (multiplication wraps, as intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


class WindowPermutation:
    """A seeded bijection of range(n), evaluated per index without a table.

    A 4-round Feistel network over the smallest even-bit power of two >= n, cycle-walking the
    indices it maps past n back into range. It shuffles billions of windows in O(1) memory,
    where `rng.permutation(n)` would hold n int64s on every rank.
    """

    ROUNDS = 4

    def __init__(self, n: int, seed: Sequence[int]) -> None:
        if n < 1:
            raise ValueError(f"a permutation needs n >= 1, got {n}")
        self.n = n
        self._half = (max(2, (n - 1).bit_length()) + 1) // 2
        self._mask = np.uint64((1 << self._half) - 1)
        rng = np.random.default_rng(list(seed))
        self._keys = rng.integers(0, np.iinfo(np.int64).max, size=self.ROUNDS).astype(np.uint64)

    def _rounds(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self._half)
        left, right = x >> half, x & self._mask
        for key in self._keys:
            left, right = right, left ^ (_mix(right ^ key) & self._mask)
        return (left << half) | right

    def __call__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.n):
            raise IndexError(f"permutation index outside range({self.n})")
        out = self._rounds(index.astype(np.uint64))
        outside = out >= self.n
        while outside.any():  # a cycle of a bijection re-enters range(n) within a few rounds
            out[outside] = self._rounds(out[outside])
            outside = out >= self.n
        return out.astype(np.int64)


class TokenLoader:
    """Training batches from the train shards of a prepared directory: each sequence a window from
    a shuffled place in the data; resumable, rank-disjoint."""

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
        self._lengths = np.array([len(s) for s in self._shards], dtype=np.int64)
        self._fingerprint = hashlib.sha256(
            json.dumps([[e["name"], e["tokens"], e["sha256"]] for e in entries]).encode()
        ).hexdigest()
        self.tokens_per_epoch = int(self._lengths.sum())
        self._per_step = world_size * batch_size  # windows per step, over all ranks
        # Windows every epoch has, whatever its shifts (a shift takes at most seq_len - 1).
        fewest = int(np.maximum((self._lengths - seq_len) // seq_len, 0).sum())
        if fewest < self._per_step:
            raise ValueError(
                f"{self.data_dir} has {self.tokens_per_epoch:,} train tokens; one step of "
                f"batch {batch_size} x seq {seq_len} x {world_size} ranks needs "
                f"{self._per_step:,} windows of {seq_len + 1} tokens "
                f"(about {self._per_step * seq_len + seq_len:,} tokens)"
            )
        self._epoch = 0
        self._position = 0
        self._new_epoch()

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def steps_per_epoch(self) -> int:
        """Steps in the current epoch (its window count varies a little with the shifts)."""
        return self.windows_per_epoch // self._per_step

    def _new_epoch(self) -> None:
        rng = np.random.default_rng([self.seed, self._epoch])
        self._shifts = rng.integers(0, self.seq_len, size=len(self._shards))
        counts = np.maximum((self._lengths - 1 - self._shifts) // self.seq_len, 0)
        self._ends = np.cumsum(counts)
        self.windows_per_epoch = int(self._ends[-1])
        self._permutation = WindowPermutation(self.windows_per_epoch, [self.seed, self._epoch, 1])

    def _roll_over(self) -> None:
        if self._position + self._per_step > self.windows_per_epoch:
            self._epoch += 1
            self._position = 0
            self._new_epoch()

    def window_starts(self, positions: np.ndarray) -> list[tuple[int, int]]:
        """(shard index, first token) of the windows at these positions of the current epoch."""
        ids = self._permutation(positions)
        shards = np.searchsorted(self._ends, ids, side="right")
        firsts = ids - np.where(shards > 0, self._ends[shards - 1], 0)
        starts = self._shifts[shards] + firsts * self.seq_len
        return [(int(s), int(t)) for s, t in zip(shards, starts, strict=True)]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 [B, T] on CPU, y = x shifted by one token."""
        self._roll_over()
        first = self._position + self.rank * self.batch_size
        span = self.seq_len + 1
        rows = [
            self._shards[shard][start : start + span]
            for shard, start in self.window_starts(np.arange(first, first + self.batch_size))
        ]
        self._position += self._per_step
        self._roll_over()  # so that `epoch` and `steps_per_epoch` describe the next batch
        ids = torch.from_numpy(np.stack(rows).astype(np.int64))
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """JSON-serialisable; identical on every rank (the position is global)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self._epoch,
            "position": self._position,
            "seq_len": self.seq_len,
            "data": self._fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; its seed replaces the constructor's, and any rank may load
        any rank's state (they are equal)."""
        version = state.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"unknown loader state version {version!r}")
        if state.get("data") != self._fingerprint:
            raise ValueError(
                f"loader state was saved for different train shards than those in {self.data_dir}"
            )
        if version == STATE_VERSION and state.get("seq_len") != self.seq_len:
            raise ValueError(
                f"loader state was saved for --seq-len {state.get('seq_len')}, this run has "
                f"{self.seq_len}: resume with the same sequence length"
            )
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._new_epoch()
        position = int(state["position"])
        if version == 1:
            # An older gpt124m read contiguous spans: continue at the same share of the epoch.
            log.warning(
                "checkpoint from an older gpt124m (contiguous data order): continuing at the same "
                "point of epoch %d in the shuffled-window order; batches differ from that version",
                self._epoch,
            )
            share = position / max(self.tokens_per_epoch, 1)
            position = min(round(share * self.windows_per_epoch), self.windows_per_epoch)
        if not 0 <= position <= self.windows_per_epoch:
            raise ValueError(f"loader state position {position} is outside the epoch")
        self._position = position


class TokenBatches:
    """What `token_batches` returns: an iterable of (x, y) that also knows its batch count
    (`len`) and `tokens`, the targets this rank scores, so a progress bar can show how far an
    evaluation has come. Each pass reads the same batches."""

    def __init__(self, tokens: np.ndarray, rows: int, batch_size: int, seq_len: int, rank: int):
        self._data, self._rows, self._rank = tokens, rows, rank
        self.batch_size, self.seq_len = batch_size, seq_len
        self.tokens = rows * seq_len

    def __len__(self) -> int:
        return -(-self._rows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows, seq_len = self._rows, self.seq_len
        for done in range(0, rows, self.batch_size):
            n = min(self.batch_size, rows - done)
            start = (self._rank * rows + done) * seq_len
            yield _to_batch(self._data[start : start + n * seq_len + 1], n, seq_len)


def token_batches(
    tokens: np.ndarray,
    *,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None,
    rank: int = 0,
    world_size: int = 1,
) -> TokenBatches:
    """Deterministic sequential read of a token array: identical on every run; ranks get
    disjoint batches. `max_tokens` is the budget over all ranks (None: the whole array).

    It reads whole rows of `seq_len`, the same number on every rank, in batches of
    `batch_size` with a shorter last one: which tokens are scored depends on the budget, the
    sequence length and the ranks, never on the batch size (an `auto` micro-batch included).
    Bad arguments raise at the call, not at the first batch."""
    _check_shape(batch_size, seq_len, rank, world_size)
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
    rows = budget // (seq_len * world_size)  # per rank
    if rows == 0:
        raise ValueError(
            f"{budget:,} tokens cannot fill one sequence of {seq_len} on each of {world_size} "
            f"rank(s) ({seq_len * world_size:,} tokens)"
        )
    return TokenBatches(tokens, rows, batch_size, seq_len, rank)


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
) -> TokenBatches:
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
