"""A decode step of fixed shape, so `torch.compile` makes it one graph and, on CUDA, one CUDA graph.

Eager decoding of a small model on a GPU is bound by kernel launches and Python: a step of GPT-2
124M is ~200 tiny kernels, each far shorter than its launch. Here every step has the same shapes
(the KV cache is allocated at a fixed length and attention reads all of it, masking what is not
yet written) and the write position is a tensor, not a Python int, so one compiled graph serves
every step and CUDA can replay it with a single launch (`mode="reduce-overhead"`).

The prompt (prefill) still runs through the eager model: its length differs per call, and it is
one step among many. The cache length is rounded up to a multiple of `CACHE_ROUND` so that calls of
similar lengths share a compiled graph instead of compiling anew.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator

import torch

from gpt124m.device import require_compiler
from gpt124m.kv_cache import KVCache
from gpt124m.model import GPT, run_trunk

CACHE_ROUND = 256
RECOMPILE_LIMIT = 64


class _StepCache:
    """The `run_trunk` cache interface over a `KVCache`'s full-length buffers: writes one
    position, given as a tensor, and hands attention every position (unwritten ones are masked).
    The eager prefill uses the `KVCache` itself."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], at: torch.Tensor):
        self.k, self.v, self.at = k, v, at

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        self.k[layer].index_copy_(2, self.at, k)
        self.v[layer].index_copy_(2, self.at, v)
        return self.k[layer], self.v[layer]

    def advance(self, n: int) -> None:
        pass  # the position lives in `at`, which the caller moves


def decode_step(
    model: GPT,
    tokens: torch.Tensor,
    pos: torch.Tensor,
    at: torch.Tensor,
    valid: torch.Tensor,
    k: list[torch.Tensor],
    v: list[torch.Tensor],
) -> torch.Tensor:
    """Logits [B, 1, V] for `tokens` [B, 1] at positions `pos` [B, 1], written at cache slot `at`
    [1] of each layer's `k` and `v` [B, H, L, D]; `valid` [B, L] marks the slots holding real
    tokens (slots after `at` are ignored)."""
    slots = torch.arange(valid.size(1), device=valid.device)
    mask = (valid & (slots <= at))[:, None, None, :]
    trunk = model.transformer
    x = run_trunk(trunk, trunk.wte(tokens), pos, mask, _StepCache(k, v, at))
    return model._logits(x)


class StaticDecoder:
    """One model's compiled step and its cache buffers, kept between calls so that a CUDA graph
    recorded once is replayed by later calls of the same batch size and cache length.

    Each call leases its buffers: calls that overlap (two generators consumed in turns, or
    threads) get buffers of their own instead of overwriting each other's cache, and the last
    buffers returned are kept for the next call."""

    def __init__(self, model: GPT):
        self._model = weakref.ref(model)
        self._steps: dict[str, Callable[..., torch.Tensor]] = {}  # by device type
        self._idle: tuple | None = None  # (key, cache, valid) free for the next call
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self, batch: int, length: int) -> Iterator[tuple[KVCache, torch.Tensor]]:
        """An empty cache of at least `length` slots (rounded up) and its `valid` mask, for the
        duration of one call; the idle buffers when their shape fits, else new ones."""
        model = self._model()
        config = model.config
        length = min(-(-length // CACHE_ROUND) * CACHE_ROUND, config.block_size)
        param = next(model.parameters())
        self._compiled(param.device)  # no compiler: fail before any work
        key = (batch, length, param.device, param.dtype)
        with self._lock:
            held, self._idle = self._idle, None
        if held is None or held[0] != key:
            held = None  # free the old buffers before allocating new ones
            cache = KVCache(config, batch, length, param.device, param.dtype)
            valid = torch.zeros((batch, length), dtype=torch.bool, device=param.device)
            for t in (*cache.k, *cache.v, valid):
                torch._dynamo.mark_static_address(t)  # CUDA graphs read them in place
            held = (key, cache, valid)
        held[1].length = 0
        try:
            yield held[1], held[2]
        finally:
            with self._lock:
                self._idle = held

    def _compiled(self, device: torch.device) -> Callable[..., torch.Tensor]:
        """The step compiled for `device`'s type (a model may move between devices)."""
        compiled = self._steps.get(device.type)
        if compiled is None:
            require_compiler(device, "compiled=True")
            # CUDA replays one CUDA graph per step; elsewhere Inductor's fused kernels suffice.
            mode = "reduce-overhead" if device.type == "cuda" else None
            compiled = torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=False)
            self._steps[device.type] = compiled
        return compiled

    def step(self, tokens, pos, at, valid, cache: KVCache) -> torch.Tensor:
        compiled = self._compiled(tokens.device)
        if tokens.device.type == "cuda":
            # The previous step's logits are consumed: the graph may overwrite its outputs.
            torch.compiler.cudagraph_mark_step_begin()
        # Every (model, batch, cache length) is its own graph by design: allow many, where
        # Dynamo's default (8) would fail a fullgraph compile at the ninth.
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return compiled(self._model(), tokens, pos, at, valid, cache.k, cache.v)


_DECODERS: weakref.WeakKeyDictionary[GPT, StaticDecoder] = weakref.WeakKeyDictionary()
_DECODERS_LOCK = threading.Lock()


def decoder_for(model: GPT) -> StaticDecoder:
    """The model's `StaticDecoder`, made on first use (once, whichever thread asks first) and
    dropped with the model."""
    with _DECODERS_LOCK:
        if model not in _DECODERS:
            _DECODERS[model] = StaticDecoder(model)
        return _DECODERS[model]
