"""The fixed-shape decode step (`compiled=True`): the same logits as the eager cached path, one
graph for every step, buffers reused between calls, and a one-line error without a compiler."""

from __future__ import annotations

import copy
import dataclasses
import gc
import weakref

import torch

import gpt124m.generate as generation
from gpt124m.flags import DECODE_COMPILE_HELP
from gpt124m.generate import GenerationConfig, decode_steps
from gpt124m.kv_cache import KVCache
from gpt124m.static_decode import CACHE_ROUND, decode_step, decoder_for

from .conftest import needs_compiler

# Left padding (lengths 5, 2, 11), a repetition penalty and sampling: every branch of a step.
PROMPTS = [
    [15496, 11, 995, 0, 50256],
    [464, 2068],
    [40, 1101, 257, 1332, 286, 262, 1080, 11, 345, 760, 13],
]


def test_step_equals_the_cached_forward_on_a_padded_batch(tiny_model):
    """`decode_step` uncompiled, after a prefill into a `KVCache` longer than needed whose
    unwritten slots hold garbage, against `GPT.forward` with a growing cache and mask."""
    torch.manual_seed(0)
    B, longest, L = len(PROMPTS), 11, 64
    ids = torch.full((B, longest), 50256)
    mask = torch.zeros((B, longest), dtype=torch.bool)
    for i, p in enumerate(PROMPTS):
        ids[i, longest - len(p) :] = torch.tensor(p)
        mask[i, longest - len(p) :] = True
    config = tiny_model.config
    with torch.inference_mode():
        ref_cache = KVCache(config, B, L, "cpu", torch.float32)
        ref_logits, _ = tiny_model(ids, attention_mask=mask, cache=ref_cache, last_only=True)
        cache = KVCache(config, B, L, "cpu", torch.float32)
        for t in cache.k + cache.v:
            t.normal_()  # stale slots must not matter
        logits, _ = tiny_model(ids, attention_mask=mask, cache=cache, last_only=True)
        valid = torch.ones((B, L), dtype=torch.bool)
        valid[:, :longest] = mask
        at, pos, full_mask = torch.tensor([longest]), mask.sum(1, keepdim=True), mask
        for _ in range(8):
            tokens = ref_logits[:, -1].argmax(-1, keepdim=True)
            full_mask = torch.cat([full_mask, torch.ones((B, 1), dtype=torch.bool)], dim=1)
            ref_logits, _ = tiny_model(tokens, attention_mask=full_mask, cache=ref_cache)
            logits = decode_step(tiny_model, tokens, pos, at, valid, cache.k, cache.v)
            torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
            at += 1
            pos += 1


def _recorded(model, cfg, monkeypatch, compiled):
    """Tokens per step and the logits each step's sampling saw."""
    seen_logits = []
    real = generation._next_tokens

    def record(logits, *args):
        seen_logits.append(logits.clone())
        return real(logits, *args)

    monkeypatch.setattr(generation, "_next_tokens", record)
    tokens = [t.clone() for t, _ in decode_steps(model, PROMPTS, cfg, compiled=compiled)]
    monkeypatch.undo()
    return torch.stack(tokens), torch.stack(seen_logits)


def _leased_buffer(model, batch: int = 1) -> torch.Tensor:
    """The first layer's key buffer a call of `batch` rows would get."""
    with decoder_for(model).lease(batch, 1) as (cache, _):
        return cache.k[0]


def _leased_k(model) -> int:
    """Where the buffers a call of the test's batch would get live."""
    return _leased_buffer(model, len(PROMPTS)).data_ptr()


@needs_compiler
def test_compiled_decoding_equals_eager_in_one_graph_reused_across_calls(tiny_model, monkeypatch):
    model = copy.deepcopy(tiny_model)
    first = GenerationConfig(max_new_tokens=24, eos_token_id=None)
    sampled = GenerationConfig(
        max_new_tokens=30, do_sample=True, temperature=0.9, top_k=40, repetition_penalty=1.3,
        seed=3, eos_token_id=None,
    )  # fmt: skip
    # EOS: a token row 0 samples at step 5, so that row finishes early and is decoded finished
    probe, _ = _recorded(model, sampled, monkeypatch, compiled=False)
    sampled = dataclasses.replace(sampled, eos_token_id=int(probe[5, 0]))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for cfg in (first, sampled):
        eager_tokens, eager_logits = _recorded(model, cfg, monkeypatch, compiled=False)
        # the second call (other length, same cache bucket) must reuse the first call's graph
        with torch._dynamo.config.patch(error_on_recompile=cfg is sampled):
            tokens, logits = _recorded(model, cfg, monkeypatch, compiled=True)
        assert torch.equal(tokens, eager_tokens)
        torch.testing.assert_close(logits, eager_logits, rtol=1e-4, atol=1e-4)  # fused kernels
        assert len(set(tokens.flatten().tolist())) > 10  # a real trajectory, not one repeated id
        if cfg is first:
            k_before = _leased_k(model)
    assert CACHE_ROUND >= 11 + 30  # both calls fit one cache length: one graph for all steps
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert _leased_k(model) == k_before
    assert (tokens[6:, 0] == sampled.eos_token_id).all()  # row 0 finished, padded with EOS
    # another batch size is another graph, even where Dynamo would allow no recompile
    with torch._dynamo.config.patch(recompile_limit=1):
        alone = generation.generate(model, PROMPTS[1:2], first, compiled=True)
    assert alone == generation.generate(model, PROMPTS[1:2], first)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


@needs_compiler
def test_overlapping_compiled_calls_keep_their_own_caches(tiny_model):
    """Two generators of the same shape consumed in turns (as a server or a caller comparing
    prompts would): each must decode as it would alone, not read the other's cache."""
    model = copy.deepcopy(tiny_model)
    cfg = GenerationConfig(max_new_tokens=16, eos_token_id=None)
    batches = [PROMPTS, [p[::-1] for p in PROMPTS]]
    alone = [[t.clone() for t, _ in decode_steps(model, b, cfg)] for b in batches]
    idle = _leased_buffer(model, len(PROMPTS))  # a warm decoder: idle buffers of this shape
    # a call abandoned midway gives its buffers back (the next call gets the same ones)
    abandoned = decode_steps(model, PROMPTS, cfg, compiled=True)
    next(abandoned)
    abandoned.close()
    assert _leased_buffer(model, len(PROMPTS)) is idle
    first, second = (decode_steps(model, b, cfg, compiled=True) for b in batches)
    turns = [(a.clone(), b.clone()) for (a, _), (b, _) in zip(first, second, strict=True)]
    assert torch.equal(torch.stack([a for a, _ in turns]), torch.stack(alone[0]))
    assert torch.equal(torch.stack([b for _, b in turns]), torch.stack(alone[1]))
    assert not torch.equal(torch.stack(alone[0]), torch.stack(alone[1]))


@needs_compiler
def test_a_model_used_compiled_is_freed_with_its_buffers(tiny_model):
    """Neither the decoder registry, its leased buffers nor Dynamo's cache keep a dropped
    model (and its KV cache) alive: a server that swaps models gets the memory back. (Checked on
    the CPU; on CUDA the CUDA-graph memory pools are torch's to keep.) Torch before 2.11 keeps
    the cache: its Dynamo stores the static-address inputs in the compiled graph, which stays
    in the step's code cache (seen with 2.9; 2.11 and 2.13 free it)."""
    model = copy.deepcopy(tiny_model)
    generation.generate(model, PROMPTS[:1], GenerationConfig(max_new_tokens=4), compiled=True)
    k = weakref.ref(_leased_buffer(model))
    dropped = weakref.ref(model)
    del model
    gc.collect()
    assert dropped() is None
    if torch.__version__ >= "2.11":  # a TorchVersion: compared as a version, not as text
        assert k() is None


def test_cli_compile_without_a_compiler_is_one_line(tiny_model_dir, monkeypatch, capsys):
    from gpt124m.cli import main

    monkeypatch.setattr("shutil.which", lambda name: None)
    argv = ["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--compile"]
    assert main([*argv, "--prompt", "Hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--compile on CPU needs a C++ compiler" in err


def test_the_compile_flags_help_states_the_cache_rounding_decoding_uses():
    """`generate/chat/demo --compile --help` quotes the rounding as a literal (the flags module
    imports no torch): it must be the one `static_decode` applies."""
    assert f"rounded up to {CACHE_ROUND})" in DECODE_COMPILE_HELP
