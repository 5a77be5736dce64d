"""Text generation with a KV cache: greedy or sampled, batched, streaming, with stop conditions.

Semantics follow transformers so numbers and habits carry over: repetition penalty, then
temperature, then top-k, then top-p; `max_length` counts the prompt, `max_new_tokens` does not
(and wins when both are set); `do_sample=False` (or temperature 0) is greedy. One default
differs: `top_k` is 0 (off) here, 50 in transformers; the commands' `--top-k` defaults to 50.
The model's logits cover exactly its vocabulary, so every id produced is one the tokenizer knows.

Prompt plus new tokens may not exceed the model's block size: that raises `ValueError` rather
than silently sliding a window, since a window changes what the model conditions on.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from gpt124m.kv_cache import KVCache
from gpt124m.model import GPT
from gpt124m.static_decode import decoder_for
from gpt124m.tokenizer import EOT_ID, Tokenizer

DEFAULT_MAX_NEW_TOKENS = 64
MIN_SCALE = 1e-6  # the smallest temperature or repetition penalty: logits / it stay finite


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. With neither length set, 64 new tokens."""

    max_new_tokens: int | None = None
    max_length: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    eos_token_id: int | None = EOT_ID
    stop: tuple[str, ...] = ()

    def validate(self) -> None:
        # Finite, and not so small that the scaled logits overflow (1e-300 gave inf, then NaN)
        if self.temperature != 0 and not MIN_SCALE <= self.temperature < math.inf:
            raise ValueError(
                f"temperature must be 0 (greedy) or a finite number >= {MIN_SCALE:g}, "
                f"got {self.temperature}"
            )
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not MIN_SCALE <= self.repetition_penalty < math.inf:
            raise ValueError(
                f"repetition_penalty must be a finite number >= {MIN_SCALE:g} (1: off), "
                f"got {self.repetition_penalty}"
            )
        if self.max_new_tokens is not None and self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.seed is not None and not 0 <= self.seed < 2**63:  # as train's --seed
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def new_token_budget(self, prompt_len: int) -> int:
        """As in transformers: `max_new_tokens` if set, else `max_length` minus the prompt."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.max_length is not None:
            return max(self.max_length - prompt_len, 0)
        return DEFAULT_MAX_NEW_TOKENS


def process_logits(
    logits: torch.Tensor, cfg: GenerationConfig, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply repetition penalty, temperature, top-k and top-p to [B, V] float logits."""
    if cfg.repetition_penalty != 1.0 and seen is not None:
        penalized = torch.where(
            logits < 0, logits * cfg.repetition_penalty, logits / cfg.repetition_penalty
        )
        logits = torch.where(seen, penalized, logits)
    if cfg.greedy:
        return logits
    logits = logits / cfg.temperature
    if cfg.top_k > 0:
        k = min(cfg.top_k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
        cum_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cum_probs <= (1 - cfg.top_p)
        remove[..., -1:] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(-1, sorted_idx, remove), float("-inf"))
    return logits


def _validate_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> None:
    if len(prompts) == 0:
        raise ValueError("prompt must not be empty: give at least one prompt")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: give at least one token")
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt {i} holds token ids outside [0, {vocab_size}): {bad[:5]}")


def decode_steps(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    *,
    compiled: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `(tokens [B], finished [B])` once per step.

    `finished` is live: a caller may set rows to True (a stop string appeared) and they stop
    producing tokens. Rows are left-padded, so each row computes what it would alone.
    Model work runs in inference mode; `finished` is an ordinary tensor so callers can write it.
    `compiled` runs each step after the prompt through `torch.compile` (a CUDA graph on CUDA;
    `gpt124m.static_decode`): the first call of a batch size and length compiles (seconds to a
    minute), later ones are fast.
    """
    cfg.validate()
    _validate_prompts(prompts, model.config.vocab_size)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    B = len(prompts)
    longest = max(len(p) for p in prompts)
    budget = cfg.new_token_budget(longest)
    block = model.config.block_size
    # The last new token is returned, never fed back: the model sees one position less.
    positions = longest + max(budget - 1, 0)
    if positions > block:
        raise ValueError(
            f"prompt ({longest} tokens) + new tokens ({budget}) exceeds the model's block size "
            f"({block}) by {positions - block}; shorten the prompt or lower "
            "max_new_tokens/max_length"
        )
    if budget == 0:
        return
    generator = None
    if not cfg.greedy:
        generator = torch.Generator(device=device)
        if cfg.seed is None:
            generator.seed()  # fresh entropy, leaving the global RNG untouched
        else:
            generator.manual_seed(cfg.seed)
    eos = cfg.eos_token_id
    vocab = model.config.vocab_size
    # Finished rows and left padding are fed to the model (masked), so they need a real id.
    pad_id = eos if eos is not None and 0 <= eos < vocab else min(EOT_ID, vocab - 1)
    filler = torch.tensor(pad_id, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)

    with contextlib.ExitStack() as leases:
        leases.enter_context(_in_eval_mode(model))
        with torch.inference_mode():
            ids, mask = _left_pad(prompts, longest, device, pad_id)
            attention_mask = None if bool(mask.all()) else mask
            seen = None
            if cfg.repetition_penalty != 1.0:
                # Index real tokens only: scattering the padding too would race with a real EOT.
                seen = torch.zeros((B, model.config.vocab_size), dtype=torch.bool, device=device)
                rows = torch.arange(B, device=device)[:, None].expand_as(ids)
                seen[rows[mask], ids[mask]] = True
            if compiled:
                decoder = decoder_for(model)
                cache, valid = leases.enter_context(decoder.lease(B, positions))
                valid[:, :longest] = mask
                valid[:, longest:] = True
                at = torch.tensor([longest], device=device)  # the cache slot written next
                pos = mask.sum(dim=1, keepdim=True)  # each row's next position
            else:
                cache = KVCache(model.config, B, positions, device, dtype)
            logits, _ = model(ids, attention_mask=attention_mask, cache=cache, last_only=True)
        for step in range(budget):
            with torch.inference_mode():
                tokens = _next_tokens(logits[:, -1, :], cfg, seen, generator)
            tokens = torch.where(finished, filler, tokens)
            yield tokens, finished
            if eos is not None:
                finished |= tokens == eos
            if step == budget - 1 or bool(finished.all()):
                return
            with torch.inference_mode():
                if seen is not None:
                    seen.scatter_(1, tokens[:, None], True)
                if compiled:
                    logits = decoder.step(tokens[:, None], pos, at, valid, cache)
                    at += 1
                    pos += 1
                    continue
                if attention_mask is not None:
                    attention_mask = torch.cat([attention_mask, mask.new_ones(B, 1)], dim=1)
                logits, _ = model(tokens[:, None], attention_mask=attention_mask, cache=cache)


_DECODING: weakref.WeakKeyDictionary[GPT, tuple[int, bool]] = weakref.WeakKeyDictionary()
_DECODING_LOCK = threading.Lock()


@contextlib.contextmanager
def _in_eval_mode(model: GPT) -> Iterator[None]:
    """Eval mode while any call decodes with `model`; the first call in saves the training flag
    and the last one out restores it, so calls that overlap (generators consumed in turns,
    server threads) neither turn dropout back on under each other nor leave the mode changed."""
    with _DECODING_LOCK:
        calls, was_training = _DECODING.get(model, (0, model.training))
        _DECODING[model] = (calls + 1, was_training)
        model.eval()
    try:
        yield
    finally:
        with _DECODING_LOCK:
            calls, was_training = _DECODING.pop(model)
            if calls > 1:
                _DECODING[model] = (calls - 1, was_training)
            else:
                model.train(was_training)


def _left_pad(
    prompts: Sequence[Sequence[int]], length: int, device: torch.device, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, length - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, length - len(p) :] = True
    return ids.to(device), mask.to(device)


def _next_tokens(
    logits: torch.Tensor,
    cfg: GenerationConfig,
    seen: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token per row from [B, V] logits."""
    scores = process_logits(logits.float(), cfg, seen)
    if cfg.greedy:
        return scores.argmax(dim=-1)
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    *,
    compiled: bool = False,
) -> list[list[int]]:
    """New token ids for each prompt; the EOS that ended a row is not included.

    Stop strings are text: `generate_text` and `stream_text` apply them, and asking for them here
    is an error rather than a setting silently ignored."""
    if cfg.stop:
        raise ValueError(
            f"stop strings {list(cfg.stop)!r} need text: use generate_text or stream_text"
        )
    out: list[list[int]] = [[] for _ in prompts]
    for tokens, finished in decode_steps(model, prompts, cfg, compiled=compiled):
        for i, (t, done) in enumerate(zip(tokens.tolist(), finished.tolist(), strict=True)):
            if not done and t != cfg.eos_token_id:
                out[i].append(t)
    return out


def _stop_index(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best


def generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    cfg: GenerationConfig,
    *,
    compiled: bool = False,
    allow_special: bool = True,
) -> list[str]:
    """Batched text-in, text-out generation; each completion is cut at the first stop string.

    `<|endoftext|>` in a prompt is the end-of-text token, as transformers' GPT-2 tokenizer and
    nanoGPT's sample.py read it (alone, it is GPT-2's unconditional start). `allow_special=False`
    reads it as text, as data preparation and SFT examples do (an instruction template's
    prompt)."""
    encoded = [tokenizer.encode(p, allow_special=allow_special) for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    for tokens, finished in decode_steps(model, encoded, cfg, compiled=compiled):
        # One read of each per step: indexing a GPU tensor row by row would wait for it B times.
        for i, (t, done) in enumerate(zip(tokens.tolist(), finished.tolist(), strict=True)):
            if done or t == cfg.eos_token_id:
                continue
            new[i].append(t)
            if cfg.stop and _stop_index(tokenizer.decode(new[i]), cfg.stop) is not None:
                finished[i] = True
    texts = [tokenizer.decode(ids) for ids in new]
    return [_cut_at_stop(t, cfg.stop) for t in texts]


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = _stop_index(text, stops)
    return text if cut is None else text[:cut]


def stream_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    cfg: GenerationConfig,
    *,
    compiled: bool = False,
    allow_special: bool = True,
) -> Iterator[str]:
    """Yield the completion of one prompt piece by piece, as tokens are produced.

    Text is held back while it is an incomplete UTF-8 character or could be the start of a stop
    string, so the concatenated pieces always equal `generate_text`'s result (with the same
    `allow_special`).
    """
    ids: list[int] = []
    emitted = 0
    prompt_ids = [tokenizer.encode(prompt, allow_special=allow_special)]
    for tokens, _ in decode_steps(model, prompt_ids, cfg, compiled=compiled):
        t = int(tokens[0])
        if t == cfg.eos_token_id:
            break
        ids.append(t)
        text = tokenizer.decode(ids)
        cut = _stop_index(text, cfg.stop) if cfg.stop else None
        if cut is not None:
            if cut > emitted:
                yield text[emitted:cut]
            return
        safe = len(text.rstrip("\ufffd"))
        safe -= _held_back(text[:safe], cfg.stop)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    text = tokenizer.decode(ids)
    if len(text) > emitted:
        yield text[emitted:]
