"""The exported model under transformers (remote code and GPT-2) against our native model."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from gpt124m.config import GPT2_VOCAB_SIZE
from gpt124m.generate import GenerationConfig, generate
from gpt124m.hf.export import export

V = GPT2_VOCAB_SIZE
EOT = 50256
LOWEST = torch.finfo(torch.float32).min  # the padding columns' logit: never chosen, never NaN


def ids_batch(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V - 1, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def hf_model(hf_env, remote_dir):
    model = hf_env.AutoModelForCausalLM.from_pretrained(str(remote_dir), trust_remote_code=True)
    return model.eval()


@pytest.fixture(scope="module")
def hf_gpt2(hf_env, gpt2_dir):
    return hf_env.GPT2LMHeadModel.from_pretrained(str(gpt2_dir)).eval()


def cache_of(output):
    return output.cache if "cache" in output else output.past_key_values


def test_class_is_a_tied_generation_capable_pretrained_model(hf_env, hf_model):
    assert isinstance(hf_model, hf_env.PreTrainedModel)
    assert isinstance(hf_model, hf_env.GenerationMixin)
    assert type(hf_model).__name__ == "GPT124MForCausalLM"
    assert hf_model._tied_weights_keys == {"lm_head.weight": "transformer.wte.weight"}
    assert hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()


def test_logits_equal_native_and_padding_ids_are_impossible(hf_model, native_model):
    ids = ids_batch(3, 20)
    with torch.no_grad():
        out = hf_model(input_ids=ids)
        ours, _ = native_model(ids)
    assert type(out).__name__ == "CausalLMOutputWithPast"
    torch.testing.assert_close(out.logits[..., :V], ours[..., :V], atol=1e-5, rtol=0)
    assert out.logits.shape[-1] == native_model.config.padded_vocab_size
    assert (out.logits[..., V:] == LOWEST).all()


def test_labels_give_the_shifted_next_token_loss(hf_model, native_model):
    ids = ids_batch(2, 16, seed=1)
    labels = ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        loss = hf_model(input_ids=ids, labels=labels).loss
        ours, _ = native_model(ids)
    expected = torch.nn.functional.cross_entropy(
        ours[:, :-1, :V].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)


def test_trainer_token_count_divides_the_summed_loss(hf_model, native_model):
    """transformers' Trainer passes `num_items_in_batch` so accumulated micro-batches average
    over every token of the step, not per micro-batch."""
    ids = ids_batch(2, 16, seed=3)
    labels = ids.clone()
    labels[1, :7] = -100
    with torch.no_grad():
        loss = hf_model(input_ids=ids, labels=labels, num_items_in_batch=40).loss
        ours, _ = native_model(ids)
    total = torch.nn.functional.cross_entropy(
        ours[:, :-1, :V].reshape(-1, V), labels[:, 1:].reshape(-1), reduction="sum"
    )
    torch.testing.assert_close(loss, total / 40, atol=1e-5, rtol=0)


def test_training_step_through_the_masked_head_lowers_the_loss(hf_env, remote_dir):
    model = hf_env.AutoModelForCausalLM.from_pretrained(str(remote_dir), trust_remote_code=True)
    model.train()
    ids = ids_batch(2, 16, seed=9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    first = model(input_ids=ids, labels=ids).loss
    first.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert not model.transformer.wte.weight.grad[V:].any()  # padding rows get no gradient
    optimizer.step()
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss < first


@pytest.mark.parametrize("kwarg", ["cache", "past_key_values"])
def test_cached_decoding_matches_full_forward(hf_model, kwarg):
    ids = ids_batch(2, 12, seed=2)
    with torch.no_grad():
        full = hf_model(input_ids=ids, use_cache=False).logits
        first = hf_model(input_ids=ids[:, :8], use_cache=True)
        cache = cache_of(first)
        assert cache.get_seq_length() == 8
        step = hf_model(input_ids=ids[:, 8:], **{kwarg: cache}, use_cache=True)
    assert cache_of(step).get_seq_length() == 12
    torch.testing.assert_close(step.logits, full[:, 8:], atol=1e-5, rtol=0)


def test_a_cache_of_fixed_length_is_refused_not_misread(hf_model):
    """A StaticCache hands attention keys padded to its length: the causal mask would be wrong
    (every query seeing every slot), so it is an error, not silently different logits."""
    from transformers.cache_utils import StaticCache

    try:
        cache = StaticCache(config=hf_model.config, max_cache_len=32)
    except TypeError:  # transformers 4.x also wants the batch size
        cache = StaticCache(config=hf_model.config, max_batch_size=1, max_cache_len=32)
    with pytest.raises(TypeError, match="DynamicCache"):
        hf_model(input_ids=ids_batch(1, 8, seed=3), past_key_values=cache)


def test_hidden_states_and_attentions_asked_for_are_an_error_not_none(hf_model):
    ids = ids_batch(1, 8, seed=3)
    for flag in ("output_hidden_states", "output_attentions"):
        with pytest.raises(ValueError, match=f"{flag}: not supported"):
            hf_model(input_ids=ids, **{flag: True})
        hf_model(input_ids=ids, **{flag: False})  # what generate passes


def test_tokens_added_by_resizing_are_not_masked_as_padding(hf_env, remote_dir):
    """The usual recipe, a new special token and `resize_token_embeddings(len(tokenizer))`: the
    new id is a real token, not one of the padding rows the head hides."""
    model = hf_env.AutoModelForCausalLM.from_pretrained(str(remote_dir), trust_remote_code=True)
    model.resize_token_embeddings(V + 1)
    ids = ids_batch(1, 8, seed=4)
    ids[0, -1] = V  # the added token
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    logits = out.logits
    assert logits.shape[-1] == V + 1 and torch.isfinite(logits).all()
    reference = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    torch.testing.assert_close(out.loss, reference, rtol=1e-5, atol=1e-5)


def test_resized_embeddings_saved_by_transformers_load_back_in_gpt124m(
    hf_env, remote_dir, tmp_path
):
    """Three tokens added in transformers (rows kept at a multiple of 64), saved, then loaded by
    gpt124m: the new ids are real tokens there too, with the same logits."""
    from gpt124m.loading import load_model

    model = hf_env.AutoModelForCausalLM.from_pretrained(str(remote_dir), trust_remote_code=True)
    model.resize_token_embeddings(V + 3, pad_to_multiple_of=64)
    with torch.no_grad():
        model.transformer.wte.weight[V : V + 3] = 5 * model.transformer.wte.weight[:3]
    model.save_pretrained(tmp_path / "resized")
    ids = ids_batch(1, 8, seed=4)
    ids[0, -2] = V + 2
    ours = load_model(tmp_path / "resized")
    assert ours.config.vocab_size == V + 3 and ours.config.padded_vocab_size == 50304
    with torch.no_grad():
        theirs = model.eval()(input_ids=ids).logits
        mine, _ = ours(ids)
    assert mine.shape[-1] == V + 3
    torch.testing.assert_close(mine, theirs[..., : V + 3], atol=1e-4, rtol=1e-5)
    assert theirs[0, -3].argmax() >= V  # precondition: a new token is the likeliest somewhere
    model.resize_token_embeddings(V + 5)  # unpadded: every row is a token
    model.save_pretrained(tmp_path / "unpadded")
    assert load_model(tmp_path / "unpadded").config.padded_vocab_size == V + 5


def test_left_padding_gives_each_row_what_it_computes_alone(hf_model):
    short, long = ids_batch(1, 5, seed=3)[0], ids_batch(1, 9, seed=4)[0]
    batch = torch.full((2, 9), EOT)
    batch[0, 4:], batch[1] = short, long
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :4] = 0
    with torch.no_grad():
        padded = hf_model(input_ids=batch, attention_mask=mask).logits
        alone = hf_model(input_ids=short[None]).logits
    torch.testing.assert_close(padded[0, 4:], alone[0], atol=1e-5, rtol=0)


def test_left_padded_batched_cached_logits_equal_native(hf_model, native_model):
    """The same left-padded batch through both, prefill then two cached steps: same logits at
    every real position, and at padded positions too (same positions, same mask)."""
    from gpt124m.kv_cache import KVCache

    ids = ids_batch(3, 10, seed=7)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, :6], mask[1, :2] = 0, 0
    ids[mask == 0] = EOT
    cache = KVCache(native_model.config, 3, 10, "cpu", torch.float32)
    with torch.no_grad():
        hf_prefill = hf_model(input_ids=ids[:, :8], attention_mask=mask[:, :8], use_cache=True)
        ours, _ = native_model(ids[:, :8], attention_mask=mask[:, :8], cache=cache)
        torch.testing.assert_close(hf_prefill.logits[..., :V], ours, atol=1e-5, rtol=0)
        hf_cache = cache_of(hf_prefill)
        for t in (8, 9):
            step = hf_model(
                input_ids=ids[:, t : t + 1],
                attention_mask=mask[:, : t + 1],
                cache=hf_cache,
                use_cache=True,
            )
            ours, _ = native_model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache)
            torch.testing.assert_close(step.logits[..., :V], ours, atol=1e-5, rtol=0)
            assert (step.logits[..., V:] == LOWEST).all()


def test_greedy_generate_uses_the_cache_and_equals_native(hf_model, native_model, monkeypatch):
    prompt = ids_batch(1, 7, seed=5)
    lengths = []
    forward = type(hf_model).forward

    @functools.wraps(forward)  # generate inspects the signature
    def recording(self, *args, **kwargs):
        lengths.append(kwargs["input_ids"].shape[1])
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(hf_model), "forward", recording)
    out = hf_model.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False
    )
    ours = generate(native_model, prompt.tolist(), GenerationConfig(max_new_tokens=12))
    assert len(set(ours[0])) > 3  # precondition: choices that depend on the context
    assert out[0, 7:].tolist() == ours[0]
    assert lengths[0] == 7 and set(lengths[1:]) == {1}  # prefill once, then one token a step


def test_batched_left_padded_generate_equals_each_row_alone(hf_env, hf_model, remote_dir):
    tokenizer = hf_env.AutoTokenizer.from_pretrained(str(remote_dir), trust_remote_code=True)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == EOT
    prompts = ["Once upon a time", "The quick brown fox jumps over the", "Hi"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=10, do_sample=False)
    together = hf_model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1] :]
    for i, prompt in enumerate(prompts):
        alone = hf_model.generate(**tokenizer([prompt], return_tensors="pt"), **kwargs)
        n = len(tokenizer(prompt)["input_ids"])
        assert together[i, : alone.shape[1] - n].tolist() == alone[0, n:].tolist()


def test_padding_rows_never_win_even_when_they_dominate(hf_env, native_model, tmp_path):
    """Make a padding row the head's argmax everywhere; the export must still never emit it."""
    from gpt124m.checkpoint import save_pretrained
    from gpt124m.model import GPT

    model = GPT(native_model.config).eval()
    model.load_state_dict(native_model.state_dict())
    with torch.no_grad():
        bias = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(0))
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(bias)
        model.transformer.wte.weight[50300] = 10 * bias  # every hidden state is `bias` now
    save_pretrained(model, tmp_path / "native")
    prompt = ids_batch(1, 4, seed=6)
    with torch.no_grad():
        assert model.lm_head(bias).argmax() == 50300  # precondition: the padding row would win
        assert model(prompt)[0].shape[-1] == V  # ours never lets it out
    out_dir = export(tmp_path / "native", tmp_path / "export")
    hf = hf_env.AutoModelForCausalLM.from_pretrained(str(out_dir), trust_remote_code=True)
    new = hf.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)[0, 4:]
    assert (new < V).all()
    assert new.tolist() == generate(model, prompt.tolist(), GenerationConfig(max_new_tokens=6))[0]


def test_log_space_generation_works_on_the_padded_head(hf_model, hf_gpt2, native_model):
    """Classifier-free guidance subtracts log-probabilities: the padding columns must not turn
    into NaN (-inf - -inf) and win the argmax. Same tokens as GPT-2's unpadded head; the entropy
    over the padded head is the entropy over the real one."""
    prompt = ids_batch(1, 6, seed=9)
    kwargs = dict(max_new_tokens=8, do_sample=False, guidance_scale=1.5)
    ours = hf_model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    theirs = hf_gpt2.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    plain = hf_gpt2.generate(input_ids=prompt, max_new_tokens=8, do_sample=False)
    assert theirs[0, 6:].tolist() != plain[0, 6:].tolist()  # precondition: guidance matters
    assert ours[0, 6:].tolist() == theirs[0, 6:].tolist()
    with torch.no_grad():
        logp = torch.log_softmax(hf_model(input_ids=prompt).logits, -1)
        logp_real = torch.log_softmax(native_model(prompt)[0], -1)
    entropy = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(entropy, -(logp_real.exp() * logp_real).sum(-1), atol=1e-4, rtol=0)


def test_remote_config_round_trips_through_transformers(hf_env, remote_dir, tmp_path):
    config = hf_env.AutoConfig.from_pretrained(str(remote_dir), trust_remote_code=True)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 2)
    assert config.max_position_embeddings == 64 and config.tokenizer_vocab_size == V
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["n_embd"] == 32 and saved["model"]["n_embd"] == 32


def test_gpt2_export_loads_in_transformers_without_remote_code(hf_gpt2, native_model):
    ids = ids_batch(2, 16, seed=7)
    with torch.no_grad():
        theirs = hf_gpt2(input_ids=ids).logits
        ours, _ = native_model(ids)
    assert theirs.shape[-1] == V
    torch.testing.assert_close(theirs, ours[..., :V], atol=1e-5, rtol=0)
    prompt = ids_batch(1, 6, seed=8)
    out = hf_gpt2.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False
    )
    ours = generate(native_model, prompt.tolist(), GenerationConfig(10))[0]
    assert len(set(ours)) > 3 and out[0, 6:].tolist() == ours
