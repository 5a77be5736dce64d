"""Instruction data: examples (read by `sft/examples.py`) -> tokenized examples with label masks -> fixed-length batches.

Prompt and response are tokenized separately, so the boundary between them is exact: labels are
-100 on every prompt token and on padding, and real on the response and its EOS. GPT-2 pads with
the EOS id, so padding is masked by position, never by id; masking EOS by id is how models learn
never to stop. An example of n tokens fills n - 1 input positions (its first token is never a
target, its last never an input), so one of up to block + 1 tokens fits; longer ones are dropped,
and counted.

`SFTBatches` is the trainer's `BatchSource`: an endless stream of epochs, each a permutation of
the train examples drawn from `(seed, epoch)`. Every rank walks the same global position and
takes its own slice of each micro-step, so ranks never overlap, and the state (epoch, position)
is enough to replay exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gpt124m.model import IGNORE_INDEX
from gpt124m.sft.examples import Example, load_examples
from gpt124m.sft.template import format_prompt
from gpt124m.tokenizer import EOT_ID, Tokenizer, get_tokenizer

log = logging.getLogger(__name__)

PAD_ID = EOT_ID
STATE_VERSION = 1


# -- tokenizing and filtering ------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    """Prompt + response + EOS token ids; the first `prompt_len` are the prompt."""

    tokens: np.ndarray
    prompt_len: int

    def __len__(self) -> int:
        return len(self.tokens)


def encode_examples(
    examples: Sequence[Example], template: str = "seed", tokenizer: Tokenizer | None = None
) -> list[Encoded]:
    """Tokenize prompts and targets (`output.strip()` + EOS) separately, in parallel."""
    tok = tokenizer or get_tokenizer()
    prompts = tok.encode_batch([format_prompt(e.instruction, e.input, template) for e in examples])
    targets = tok.encode_batch([e.output.strip() for e in examples])
    return [
        Encoded(np.array([*p, *t, EOT_ID], dtype=np.int32), len(p))
        for p, t in zip(prompts, targets, strict=True)
    ]


def filter_by_length(encoded: Sequence[Encoded], max_len: int) -> tuple[list[Encoded], int]:
    """Keep examples whose inputs fit `max_len` positions (at most `max_len + 1` tokens of
    prompt + response + EOS); count the rest."""
    kept = [e for e in encoded if len(e) - 1 <= max_len]
    return kept, len(encoded) - len(kept)


def split(
    encoded: Sequence[Encoded], val_fraction: float, seed: int = 0
) -> tuple[list[Encoded], list[Encoded]]:
    """A seeded random validation split of `round(n * val_fraction)` examples (>= 1 if asked)."""
    n = len(encoded)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n > 1:
        n_val = max(n_val, 1)
    order = np.random.default_rng(seed).permutation(n)
    val_idx = np.sort(order[:n_val])
    train_idx = np.sort(order[n_val:])
    return [encoded[i] for i in train_idx], [encoded[i] for i in val_idx]


def make_batch(examples: Sequence[Encoded], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 [B, seq_len]: x padded with EOS ids, y = next tokens with prompt and
    padding positions set to -100 (by position, so the real EOS keeps its label)."""
    x = np.full((len(examples), seq_len), PAD_ID, dtype=np.int64)
    y = np.full((len(examples), seq_len), IGNORE_INDEX, dtype=np.int64)
    for row, e in enumerate(examples):
        n = len(e) - 1
        if n > seq_len:
            raise ValueError(f"example of {len(e)} tokens does not fit seq_len {seq_len}")
        x[row, :n] = e.tokens[:-1]
        y[row, e.prompt_len - 1 : n] = e.tokens[e.prompt_len :]
    return torch.from_numpy(x), torch.from_numpy(y)


def padded_length(encoded: Sequence[Encoded], max_len: int, pad_to: str) -> int:
    """Batch length T: the block (`max_len`), or the longest example's input length."""
    if pad_to == "block":
        return max_len
    if pad_to == "longest":
        return max(len(e) for e in encoded) - 1
    raise ValueError(f"--pad-to {pad_to!r}: choose block or longest")


def fingerprint(encoded: Sequence[Encoded]) -> str:
    h = hashlib.sha256()
    for e in encoded:
        h.update(e.prompt_len.to_bytes(4, "little"))
        h.update(len(e).to_bytes(4, "little"))
        h.update(e.tokens.tobytes())
    return h.hexdigest()


# -- batches -----------------------------------------------------------------------------------
class SFTBatches:
    """Training batches of `batch_size` examples per rank; resumable, rank-disjoint, endless."""

    def __init__(
        self,
        examples: Sequence[Encoded],
        *,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if not examples:
            raise ValueError("no training examples")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank}, {world_size}")
        self.examples = list(examples)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self._fingerprint = fingerprint(self.examples)
        self._epoch = 0
        self._position = 0
        self._set_order()

    @property
    def epoch(self) -> int:
        return self._epoch

    def _set_order(self) -> None:
        self._order = np.random.default_rng([self.seed, self._epoch]).permutation(
            len(self.examples)
        )

    def _take(self, n: int) -> list[int]:
        """The next `n` example indices of the global stream, across epoch boundaries."""
        taken: list[int] = []
        while len(taken) < n:
            if self._position == len(self._order):
                self._epoch += 1
                self._position = 0
                self._set_order()
            chunk = self._order[self._position : self._position + n - len(taken)]
            taken.extend(int(i) for i in chunk)
            self._position += len(chunk)
        return taken

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        step = self._take(self.batch_size * self.world_size)
        mine = step[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return make_batch([self.examples[i] for i in mine], self.seq_len)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable and the same on every rank (the position is global)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self._epoch,
            "position": self._position,
            "data": self._fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unknown SFT loader state version {state.get('version')!r}")
        if state.get("data") != self._fingerprint:
            raise ValueError(
                "SFT loader state was saved for different training examples (data, template, "
                "block size or split changed since the checkpoint)"
            )
        position = int(state["position"])
        if not 0 <= position <= len(self.examples):
            raise ValueError(f"SFT loader state position {position} is outside the epoch")
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._position = position
        self._set_order()


def padded_validation_batches(
    examples: Sequence[Encoded],
    *,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The validation examples in order, each rank its own slice of every step; the same
    batches every time. `max_tokens` caps the tokens over all ranks, counted padded to
    `seq_len` (None: all); each batch is then cut to its longest example.
    Only whole steps are read, so every rank gets the same number of batches."""
    per_step = batch_size * world_size
    n_steps = validation_steps(len(examples), per_step, seq_len, max_tokens)
    for s in range(n_steps):
        start = s * per_step + rank * batch_size
        chunk = examples[start : start + batch_size]
        # Padding is masked and attention causal, so trimming it changes no loss: it only saves
        # the compute that padding to the block would waste.
        yield make_batch(chunk, min(seq_len, max(len(e) for e in chunk) - 1))


def validation_steps(n_examples: int, per_step: int, seq_len: int, max_tokens: int | None) -> int:
    """Whole validation steps of `per_step` examples within `max_tokens` padded to `seq_len`
    (at least one when there are enough examples for one)."""
    n_steps = n_examples // per_step
    if max_tokens:
        n_steps = min(n_steps, max(1, max_tokens // (per_step * seq_len)))
    return n_steps


# -- the whole preparation ---------------------------------------------------------------------
@dataclass
class SFTData:
    train: list[Encoded]
    val: list[Encoded]
    seq_len: int  # padded batch length T
    stats: dict[str, Any]


def prepare(
    source: str,
    *,
    template: str,
    max_len: int,
    pad_to: str,
    val_fraction: float,
    split_seed: int = 0,
    tokenizer: Tokenizer | None = None,
) -> SFTData:
    """Read, validate, tokenize, length-filter and split; log what was kept and dropped."""
    examples, report = load_examples(source)
    encoded = encode_examples(examples, template, tokenizer)
    kept, too_long = filter_by_length(encoded, max_len)
    if not kept:
        longest = min(len(e) for e in encoded)
        raise ValueError(
            f"--data {source}: all {len(encoded)} examples are longer than {max_len + 1} tokens "
            f"(block {max_len} + 1; the shortest has {longest})"
        )
    train, val = split(kept, val_fraction, split_seed)
    if not train:
        raise ValueError(f"--data {source}: no training examples left after the validation split")
    seq_len = padded_length(kept, max_len, pad_to)
    real = sum(len(e) - e.prompt_len for e in train)
    stats = {
        "source": report.source,
        "rows": report.rows,
        "malformed": report.malformed,
        "malformed_by_reason": {k: len(v) for k, v in report.problems.items()},
        "too_long": too_long,
        "max_len": max_len,
        "kept": len(kept),
        "train": len(train),
        "val": len(val),
        "longest": max(len(e) for e in kept),
        "seq_len": seq_len,
        "train_response_tokens": real,
        "train_padding_fraction": round(
            1 - sum(len(e) - 1 for e in train) / (len(train) * seq_len), 4
        ),
    }
    log.info(
        "%s: %d rows, %d malformed, %d dropped as longer than %d tokens (block + 1) -> "
        "%d train / %d val "
        "examples, padded to %d (%s)",
        report.source,
        report.rows,
        report.malformed,
        too_long,
        max_len + 1,
        len(train),
        len(val),
        seq_len,
        pad_to,
    )
    return SFTData(train, val, seq_len, stats)


def steps_for(n_train: int, epochs: float, batch_size: int) -> int:
    return max(1, math.ceil(epochs * n_train / batch_size))
