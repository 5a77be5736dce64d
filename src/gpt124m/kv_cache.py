"""Preallocated per-layer key/value buffers: decoding costs one token of compute per step.

Apart from `model.py` (which the export ships verbatim and which must import only torch), so the
network file stays the network; anything with `update(layer, k, v)` and `advance(n)` serves it.
"""

from __future__ import annotations

import torch


class KVCache:
    """Preallocated key/value buffers, one tensor per layer: decoding writes in place, with no
    re-concatenation, and a compiled step (`static_decode`) updates each layer's buffer in place
    (as slices of one stacked tensor, Inductor would copy the whole stack on every write)."""

    def __init__(self, config, batch_size: int, max_len: int, device, dtype):
        if max_len > config.block_size:
            raise ValueError(f"cache length {max_len} exceeds block size {config.block_size}")
        shape = (batch_size, config.n_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0
        self.block_size = config.block_size

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.size(2)
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def expand(self, rows: torch.Tensor, max_len: int) -> KVCache:
        """A new cache of `len(rows)` sequences, sequence i starting as this cache's sequence
        `rows[i]`, with room for `max_len` positions: many continuations of a few shared
        prefixes (a context and its multiple-choice endings) compute each prefix once."""
        if max_len > self.block_size:
            raise ValueError(f"cache length {max_len} exceeds block size {self.block_size}")
        if max_len < self.length:
            raise ValueError(f"cache length {max_len} is shorter than the prefix ({self.length})")
        new = object.__new__(KVCache)
        _, n_head, _, head_dim = self.k[0].shape
        shape = (len(rows), n_head, max_len, head_dim)
        new.k = [layer.new_zeros(shape) for layer in self.k]
        new.v = [layer.new_zeros(shape) for layer in self.v]
        for old, fresh in zip(self.k + self.v, new.k + new.v, strict=True):
            fresh[:, :, : self.length] = old[rows, :, : self.length]
        new.length, new.block_size = self.length, self.block_size
        return new
