"""The transformers baseline every bench compares against: GPT2LMHeadModel with our shape."""

from __future__ import annotations

CAUSAL_SDPA = "sdpa_causal"


def transformers_gpt2(config, *, vocab_size: int | None = None, unpadded_training: bool = False):
    """A randomly initialised, dropout-free GPT2LMHeadModel (SDPA attention) shaped like `config`.

    `unpadded_training`: set up as a careful user trains it on unpadded batches, so that a ratio
    against it is not inflated by its defaults: no KV cache (built and concatenated in every
    layer otherwise); SDPA told the mask is causal (under torch.compile, transformers 5.17 builds
    a [B, 1, T, T] mask even without padding, which rules out flash attention and does the whole
    T x T work); a named loss type (the default's one-time warning splits a compiled model in
    two graphs)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        n_positions=config.block_size,
        vocab_size=vocab_size or config.padded_vocab_size,  # same matmul shapes as ours
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        use_cache=not unpadded_training,
    )
    hf_config._attn_implementation = _causal_sdpa() if unpadded_training else "sdpa"
    model = GPT2LMHeadModel(hf_config)
    if unpadded_training:
        model.loss_type = "ForCausalLM"
    return model


def _causal_sdpa() -> str:
    """transformers' own SDPA attention, registered with no mask function: with no padding
    it then calls SDPA with `is_causal=True`. Older transformers: its plain `sdpa`."""
    try:
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
    except ImportError:
        return "sdpa"
    AttentionInterface.register(CAUSAL_SDPA, sdpa_attention_forward)
    AttentionMaskInterface.register(CAUSAL_SDPA, lambda *args, **kwargs: None)
    return CAUSAL_SDPA
