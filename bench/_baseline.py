"""The transformers baseline every bench compares against: GPT2LMHeadModel with our shape."""

from __future__ import annotations


def transformers_gpt2(config, *, vocab_size: int | None = None):
    """A randomly initialised, dropout-free GPT2LMHeadModel (SDPA attention) shaped like `config`."""
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
    )
    hf_config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(hf_config)
