"""Generation: lengths, greedy and sampling, logits processing as in transformers, stops, batching."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from gpt124m.generate import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationConfig,
    decode_steps,
    generate,
    generate_text,
    process_logits,
    stream_text,
)

PROMPTS = [
    [464],
    [15496, 11, 995, 0, 50256],
    [40, 1101, 257, 1332, 286, 262, 1080, 11, 345, 760, 13],
]
TEXT = "The quick brown fox"
LONG = {"max_new_tokens": 8}


def greedy(**kw) -> GenerationConfig:
    return GenerationConfig(**{"max_new_tokens": 12, "eos_token_id": None, **kw})


@torch.no_grad()
def reference_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Argmax over the real vocabulary with a full forward per step: no cache, no padding."""
    ids = list(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1, :50257].argmax()))
    return ids[len(prompt) :]


def test_greedy_matches_uncached_reference(tiny_model):
    for prompt in PROMPTS[1:]:
        out = generate(tiny_model, [prompt], greedy())[0]
        assert out == reference_greedy(tiny_model, prompt, 12)
        assert len(set(out)) > 3  # precondition: the model does not just repeat one token


def test_length_settings(tiny_model):
    prompt = PROMPTS[2]
    assert len(generate(tiny_model, [prompt], greedy(max_new_tokens=5))[0]) == 5
    full = generate(tiny_model, [prompt], greedy(max_new_tokens=None, max_length=16))[0]
    assert len(prompt) + len(full) == 16  # max_length counts the prompt
    both = generate(tiny_model, [prompt], greedy(max_new_tokens=3, max_length=16))[0]
    assert both == full[:3]  # as in transformers, max_new_tokens wins when both are set
    assert generate(tiny_model, [prompt], greedy(max_new_tokens=None, max_length=5)) == [[]]
    assert generate(tiny_model, [prompt], greedy(max_new_tokens=0)) == [[]]
    assert GenerationConfig().new_token_budget(7) == DEFAULT_MAX_NEW_TOKENS  # neither set


def test_temperature_zero_is_greedy(tiny_model):
    base = generate(tiny_model, PROMPTS, greedy())
    sampled_at_zero = greedy(do_sample=True, temperature=0.0, top_k=50, top_p=0.5, seed=3)
    assert generate(tiny_model, PROMPTS, sampled_at_zero) == base


def test_sampling_seed_and_top_k_one(tiny_model):
    prompts = PROMPTS[1:]
    cfg = greedy(do_sample=True, temperature=1.5, seed=7, **LONG)
    first = generate(tiny_model, prompts, cfg)
    assert generate(tiny_model, prompts, cfg) == first
    assert generate(tiny_model, prompts, dataclasses.replace(cfg, seed=8)) != first
    greedy_out = generate(tiny_model, prompts, greedy(**LONG))
    assert first != greedy_out
    assert generate(tiny_model, prompts, dataclasses.replace(cfg, top_k=1)) == greedy_out


def test_unseeded_sampling_leaves_global_rng_alone(tiny_model):
    state = torch.get_rng_state()
    generate(tiny_model, PROMPTS[:1], greedy(do_sample=True, max_new_tokens=3))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.7),
        dict(top_k=20),
        dict(top_p=0.9),
        dict(top_p=0.3, temperature=2.0),
        dict(repetition_penalty=1.3, temperature=0.8, top_k=40, top_p=0.8),
        dict(repetition_penalty=0.7, temperature=1.3, top_k=500, top_p=0.95),
        dict(repetition_penalty=2.0, top_k=7, top_p=0.01),
    ],
)
def test_logits_processing_matches_transformers(settings):
    lp = pytest.importorskip("transformers.generation.logits_process")
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 1000, generator=g) * 3
    input_ids = torch.randint(0, 1000, (4, 30), generator=g)
    cfg = GenerationConfig(do_sample=True, **settings)
    processors = lp.LogitsProcessorList()
    if cfg.repetition_penalty != 1.0:
        processors.append(lp.RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    processors.append(lp.TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k:
        processors.append(lp.TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1:
        processors.append(lp.TopPLogitsWarper(cfg.top_p))
    expected = processors(input_ids, scores.clone())
    seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, input_ids, True)
    ours = process_logits(scores.clone(), cfg, seen)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    assert (~torch.isinf(ours)).any(dim=-1).all()
    kept = ~torch.isinf(expected)
    torch.testing.assert_close(ours[kept], expected[kept], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "settings",
    [dict(temperature=1.0), dict(temperature=0.7, top_k=9), dict(temperature=1.3, top_p=0.8)],
)
def test_sampled_tokens_follow_the_processed_distribution(settings):
    """20,000 draws from fixed logits: each token's count within 5 standard deviations of its
    probability under transformers' warpers, and never a token they remove. (Seeds that repeat
    and differ say nothing of the distribution itself.)"""
    from gpt124m.generate import _next_tokens

    lp = pytest.importorskip("transformers.generation.logits_process")
    n, vocab = 20_000, 48
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(1)) * 2
    cfg = GenerationConfig(do_sample=True, **settings)
    warpers = lp.LogitsProcessorList([lp.TemperatureLogitsWarper(cfg.temperature)])
    if cfg.top_k:
        warpers.append(lp.TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1:
        warpers.append(lp.TopPLogitsWarper(cfg.top_p))
    p = warpers(torch.zeros(1, 1, dtype=torch.long), logits.clone()).softmax(-1)[0].double()
    drawn = _next_tokens(logits.expand(n, vocab), cfg, None, torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=vocab).double()
    assert (counts[p == 0] == 0).all()
    sigma = (n * p * (1 - p)).sqrt()
    assert ((counts - n * p).abs() <= 5 * sigma + 1).all(), (counts - n * p) / (sigma + 1e-9)
    assert (p > 0.02).sum() >= 4  # precondition: a spread worth testing, not one likely token


def test_end_of_text_in_a_prompt_is_the_token_transformers_reads(tiny_model, tok, tmp_path):
    """`<|endoftext|>` in a prompt is the token, as transformers' GPT-2 tokenizer (and nanoGPT's
    sample.py) reads it, not its 7 characters: `--prompt '<|endoftext|>'` is GPT-2's
    unconditional start."""
    transformers = pytest.importorskip("transformers")
    tok.save_hf_files(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    prompt = "Hello<|endoftext|>The"
    ids = hf(prompt, add_special_tokens=False)["input_ids"]
    cfg = GenerationConfig(max_new_tokens=6, eos_token_id=None)
    expected = tok.decode(generate(tiny_model, [ids], cfg)[0])
    as_text = tok.decode(generate(tiny_model, [tok.encode(prompt)], cfg)[0])
    assert 50256 in ids and as_text != expected  # precondition: the reading matters here
    assert generate_text(tiny_model, tok, [prompt], cfg) == [expected]
    assert "".join(stream_text(tiny_model, tok, prompt, cfg)) == expected


def test_eos_stops_each_row(tiny_model):
    base = generate(tiny_model, PROMPTS, greedy(max_new_tokens=16))
    # an EOS that row 0 reaches part-way and the last row never produces
    eos = next(t for i, t in enumerate(base[0]) if i > 0 and t not in base[0][:i] + base[-1])
    out = generate(tiny_model, PROMPTS, greedy(max_new_tokens=16, eos_token_id=eos))
    lengths = []
    for prompt, row in zip(PROMPTS, out, strict=True):
        ref = reference_greedy(tiny_model, prompt, 16)
        lengths.append(ref.index(eos) if eos in ref else len(ref))
        assert row == ref[: lengths[-1]]  # the EOS itself is not returned
    # Preconditions: the EOS cuts row 0 short and the last row runs to the end, so one row's EOS
    # must neither stop the batch nor be missed.
    assert 0 < lengths[0] < 16 and lengths[-1] == 16


def test_batched_prompts_equal_each_alone(tiny_model):
    for cfg in (greedy(max_new_tokens=10), greedy(max_new_tokens=10, repetition_penalty=1.5)):
        batched = generate(tiny_model, PROMPTS, cfg)
        alone = [generate(tiny_model, [p], cfg)[0] for p in PROMPTS]
        assert batched == alone
        assert len({tuple(r) for r in batched}) == len(PROMPTS)


def test_bfloat16_cli_equals_a_left_padded_bfloat16_batch(tiny_model_dir, tok, capsys):
    """`generate --precision bf16`, one prompt per call, against the same prompts batched
    (left-padded to the longest) on the model loaded in bfloat16."""
    from gpt124m.cli import main
    from gpt124m.loading import load_model

    prompts = [TEXT, "Hello", "x = [1, 2,", "Once upon a time, in a land far away, there lived"]
    assert len({len(tok.encode(p)) for p in prompts}) == len(prompts)  # real padding
    model = load_model(tiny_model_dir, dtype=torch.bfloat16)
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    cfg = GenerationConfig(max_new_tokens=12)
    batched = generate_text(model, tok, prompts, cfg)
    argv = ["generate", "--model", str(tiny_model_dir), "--precision", "bf16", "--device", "cpu"]
    argv += ["--temperature", "0", "--max-new-tokens", "12"]
    alone = []
    for prompt in prompts:
        assert main([*argv, "--prompt", prompt]) == 0
        alone.append(capsys.readouterr().out.removesuffix("\n"))
    assert alone == batched
    assert len(set(batched)) == len(prompts)
    # bf16 really ran: with these weights, its rounding changes some greedy continuation
    fp32 = generate_text(load_model(tiny_model_dir), tok, prompts, cfg)
    assert fp32 != batched


def test_stop_strings_in_text_and_stream(tiny_model, tok):
    cfg = GenerationConfig(max_new_tokens=20)
    full = generate_text(tiny_model, tok, [TEXT], cfg)[0]
    pieces = list(stream_text(tiny_model, tok, TEXT, cfg))
    assert "".join(pieces) == full and len(pieces) > 1
    cut = len(full) // 2
    cases = [
        (full[cut : cut + 3],),  # a stop string somewhere in the middle
        (full[-4:-1], full[cut : cut + 3]),  # two: the earlier occurrence wins
        (full[-3:] + "\u2603never",),  # a prefix matches at the end, the rest never comes
        ("\u2603not there",),
    ]
    for stop in cases:
        cfg_stop = GenerationConfig(max_new_tokens=20, stop=stop)
        found = [full.find(s) for s in stop if s in full]
        expected = full[: min(found)] if found else full
        assert generate_text(tiny_model, tok, [TEXT], cfg_stop) == [expected], stop
        assert "".join(stream_text(tiny_model, tok, TEXT, cfg_stop)) == expected, stop
    # Batched text generation cuts each row at its own stop and equals each prompt alone.
    prompts = [TEXT, "Hello", "x = [1, 2,"]
    stop_cfg = GenerationConfig(max_new_tokens=20, stop=(full[cut : cut + 3], "\n"))
    assert generate_text(tiny_model, tok, prompts, stop_cfg) == [
        generate_text(tiny_model, tok, [p], stop_cfg)[0] for p in prompts
    ]


def test_stop_strings_on_ids_are_an_error_not_ignored(tiny_model):
    with pytest.raises(ValueError, match="generate_text or stream_text"):
        generate(tiny_model, [[1, 2]], GenerationConfig(max_new_tokens=3, stop=("x",)))


def test_block_size_overflow_is_an_error(tiny_model):
    block = tiny_model.config.block_size
    with pytest.raises(ValueError, match="block size"):
        generate(tiny_model, [[1] * (block - 4)], greedy(max_new_tokens=6))
    with pytest.raises(ValueError, match="block size"):
        generate(tiny_model, [[1] * 3], greedy(max_new_tokens=None, max_length=block + 2))
    assert len(generate(tiny_model, [[1] * (block - 4)], greedy(max_new_tokens=5))[0]) == 5
    # the last new token is never fed back, so a full block still gives one more (as
    # transformers' generate does): the argmax of a plain forward over the whole block
    prompt = torch.randint(0, 1000, (block,), generator=torch.Generator().manual_seed(0))
    (new,) = generate(tiny_model, [prompt.tolist()], greedy(max_new_tokens=1))
    with torch.no_grad():
        logits, _ = tiny_model(prompt[None])
    assert new == [logits[0, -1].argmax().item()]


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.01), "top_p"),
        (dict(top_p=-0.5), "top_p"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_length=0, max_new_tokens=None), "max_length"),
    ],
)
def test_invalid_settings_name_the_argument(tiny_model, tok, settings, name):
    cfg = GenerationConfig(do_sample=True, **settings)
    with pytest.raises(ValueError, match=name):
        generate(tiny_model, PROMPTS[:1], cfg)
    with pytest.raises(ValueError, match=name):
        list(stream_text(tiny_model, tok, TEXT, cfg))


def test_empty_prompt_is_an_error(tiny_model, tok):
    for call in (
        lambda: generate(tiny_model, [], greedy()),
        lambda: generate(tiny_model, [[464], []], greedy()),
        lambda: generate(tiny_model, [[464, tiny_model.config.vocab_size]], greedy()),
        lambda: generate(tiny_model, [[-1]], greedy()),
        lambda: generate_text(tiny_model, tok, [""], greedy()),
        lambda: list(stream_text(tiny_model, tok, "", greedy())),
    ):
        with pytest.raises(ValueError, match="prompt"):
            call()


def test_generation_restores_training_mode(tiny_model, tok):
    model = copy.deepcopy(tiny_model).train()
    generate(model, PROMPTS[:1], greedy(max_new_tokens=2))
    assert model.training
    stream = stream_text(model, tok, "a", greedy())
    next(stream)
    stream.close()  # abandoned midway, as a client that disconnects
    assert model.training


def test_overlapping_calls_decode_in_eval_and_restore_the_mode_once(tiny_model):
    """Two calls consumed in turns on a model in training mode: the one that ends first must
    not switch the other back to training (dropout) midway, and the model ends as it began."""
    model = copy.deepcopy(tiny_model).train()
    first, second = (decode_steps(model, PROMPTS, greedy(max_new_tokens=4)) for _ in range(2))
    next(first)
    next(second)
    first.close()
    assert not model.training  # `second` is still decoding
    list(second)
    assert model.training


def test_stream_holds_back_split_characters_and_stop_prefixes(tiny_model, tok, monkeypatch):
    """Script the token stream (emoji split over tokens) to check the text layer exactly."""
    import gpt124m.generate as gen

    script = "Zürich 🤖🚀 is 日本語!\n\nEnd"
    ids = tok.encode(script)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # precondition: split characters

    def scripted(model, prompts, cfg, compiled=False):
        finished = torch.zeros(len(prompts), dtype=torch.bool)
        for t in ids[: cfg.max_new_tokens]:
            tokens = torch.where(finished, cfg.eos_token_id, torch.full((len(prompts),), t))
            yield tokens, finished
            if finished.all():
                return

    monkeypatch.setattr(gen, "decode_steps", scripted)
    for stop, expected in [
        ((), script),
        (("🚀",), "Zürich 🤖"),
        (("\n\n",), "Zürich 🤖🚀 is 日本語!"),
        (("日本語?",), script),
        (("本", "🤖"), "Zürich "),
    ]:
        cfg = GenerationConfig(max_new_tokens=len(ids), stop=stop)
        pieces = list(stream_text(tiny_model, tok, "x", cfg))
        assert "".join(pieces) == expected, stop
        assert all(p and "\ufffd" not in p for p in pieces), pieces
        assert generate_text(tiny_model, tok, ["x", "y"], cfg) == [expected, expected]
