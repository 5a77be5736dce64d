"""The shard writer of `gpt124m.data.prepare`: fills val then train shards from a token stream,
writes each atomically and records it in the manifest, so that a rerun can resume after it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpt124m.atomic import atomic_write_text
from gpt124m.data import shards as fmt

if TYPE_CHECKING:
    from gpt124m.data.prepare import PrepareConfig

# Shards under MIN_SHARD_TOKENS (one GPT-2 context) are for small sources: at most
# MAX_SMALL_SHARDS of them. The manifest is rewritten after every shard, so the time grows with
# the square of their number: the builtin corpus took 5 s in 1,024-token shards, 6 minutes in
# 100-token ones, and would take days in the 755,000 one-token shards `--shard-tokens 1` asked.
MIN_SHARD_TOKENS = 1024
MAX_SMALL_SHARDS = 100


def too_many_small_shards(shard_tokens: int, why: str) -> ValueError:
    return ValueError(
        f"shard_tokens {shard_tokens:,} is below {MIN_SHARD_TOKENS:,}, which only a source of at "
        f"most {MAX_SMALL_SHARDS} shards may use, and {why}; use {MIN_SHARD_TOKENS:,} or more "
        "(the default is 100,000,000)"
    )


class ShardWriter:
    """Fills val then train shards, writing each atomically and recording the manifest."""

    def __init__(self, cfg: PrepareConfig, out: Path, base: dict, shards: list[dict]):
        self.cfg, self.out, self.base = cfg, out, base
        self.shards = shards
        self.val_target = cfg.resolved_val_tokens
        self.written = sum(s["tokens"] for s in shards)
        self.val_written = sum(s["tokens"] for s in shards if s["split"] == "val")
        if cfg.val_tokens is None and 0 < self.val_written < self.val_target:
            self.val_target = self.val_written  # an earlier run split a small source
        self.buffer = np.empty(0, dtype=np.uint16)
        self.fill = 0
        self._next_buffer()

    def _next_buffer(self) -> None:
        if self.val_written < self.val_target:
            self.split = "val"
            size = min(self.cfg.shard_tokens, self.val_target - self.val_written)
        else:
            self.split, size = "train", self.cfg.shard_tokens
        if self.cfg.max_tokens is not None:
            size = min(size, max(self.cfg.max_tokens - self.written, 0))
        if len(self.buffer) != size:
            self.buffer = np.empty(size, dtype=np.uint16)
        self.fill = 0

    @property
    def done(self) -> bool:
        return self.cfg.max_tokens is not None and self.written >= self.cfg.max_tokens

    @property
    def space(self) -> int:
        return len(self.buffer) - self.fill

    def add(self, tokens: np.ndarray) -> None:
        self.buffer[self.fill : self.fill + len(tokens)] = tokens
        self.fill += len(tokens)
        self.written += len(tokens)
        if self.split == "val":
            self.val_written += len(tokens)

    def flush(self, end: dict) -> None:
        """Write the buffer as the next shard of its split; `end` is where the stream stands."""
        self._append(self.split, self.buffer[: self.fill], end)
        self.save(complete=False)
        self._next_buffer()

    def flush_split(self, n_val: int, val_end: dict, end: dict) -> None:
        """Write the buffer as a val shard of its first `n_val` tokens and a train shard of the
        rest (a source smaller than the default validation shard)."""
        tokens = self.buffer[: self.fill]
        self._append("val", tokens[:n_val], val_end)
        self._append("train", tokens[n_val:], end)
        self.save(complete=False)
        self.val_written = n_val

    def _append(self, split: str, tokens: np.ndarray, end: dict) -> None:
        small = self.cfg.shard_tokens < MIN_SHARD_TOKENS
        if small and len(self.shards) >= MAX_SMALL_SHARDS:
            self.discard()  # shards that can never be completed would only block a retry
            raise too_many_small_shards(self.cfg.shard_tokens, "this source needs more")
        index = sum(1 for s in self.shards if s["split"] == split)
        name = fmt.shard_name(split, index)
        digest = fmt.write_shard(self.out / name, tokens)
        self.shards.append(
            {"name": name, "split": split, "tokens": len(tokens), "sha256": digest, "end": end}
        )

    def discard(self) -> None:
        """Remove the manifest and every shard it lists: settings that cannot work for this
        source leave nothing that would block a retry with other settings."""
        (self.out / fmt.MANIFEST).unlink(missing_ok=True)
        for entry in self.shards:
            (self.out / entry["name"]).unlink(missing_ok=True)
        self.shards = []

    def save(self, *, complete: bool, extra: dict | None = None) -> dict:
        manifest = {**self.base, "complete": complete, "shards": self.shards, **(extra or {})}
        atomic_write_text(self.out / fmt.MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return manifest
