"""transformers adapter for gpt124m checkpoints (shipped with exported models as remote code).

The network itself is gpt124m's own `model.py`, which `gpt124m export` copies beside this file as
`gpt124m_network.py`: the trunk (embeddings, blocks, final norm), its init and its masking are that
file's, so an exported model cannot compute anything gpt124m does not. This file adds only what
transformers asks of a causal LM: the `PreTrainedModel` plumbing, transformers' Cache API
(DynamicCache), `labels` shifted inside, `inputs_embeds`, `position_ids`, `logits_to_keep`, and
logits over every embedding row with the dtype's lowest finite value past the tokenizer
(transformers sizes the vocabulary by embedding rows; -inf would make NaN of log-space arithmetic
such as classifier-free guidance or an entropy). It runs where only torch and transformers are
installed: it must not import gpt124m.
"""

import dataclasses

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_gpt124m import GPT124MConfig
from .gpt124m_network import (
    build_trunk,
    cross_entropy,
    init_weights,
    positions_and_mask,
    run_trunk,
)

# transformers 5 renamed the cache field of model outputs (and the forward argument) from
# `past_key_values` to `cache`; fill whichever this installed version has.
LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default, which the network uses
_OUTPUT_FIELDS = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
_CACHE_FIELD = "cache" if "cache" in _OUTPUT_FIELDS else "past_key_values"


class _CacheView:
    """transformers' Cache seen through the interface the network's attention calls."""

    def __init__(self, cache: Cache):
        self.cache = cache

    def update(self, layer, k, v):
        return self.cache.update(k, v, layer)

    def advance(self, n):
        pass  # a DynamicCache counts what it stored


class GPT124MPreTrainedModel(PreTrainedModel):
    config_class = GPT124MConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["Block"]
    # transformers 4.x: generate may hand us a DynamicCache; a StaticCache it must not.
    _supports_cache_class = True
    _supports_static_cache = False

    def _init_weights(self, module):
        init_weights(module, self.config.n_layer, self.config.initializer_range)


class GPT124MForCausalLM(GPT124MPreTrainedModel, GenerationMixin):
    # {target: source}: transformers 5 reads the mapping, 4.x iterates the keys.
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPT124MConfig):
        super().__init__(config)
        if config.layer_norm_epsilon != LAYER_NORM_EPS:
            raise ValueError(
                f"layer_norm_epsilon {config.layer_norm_epsilon}: the network uses {LAYER_NORM_EPS}"
            )
        self.transformer = build_trunk(config, config.vocab_size, config.n_positions)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, **kwargs):
        """transformers' resize; rows up to `new_num_tokens` are real tokens (added to the
        tokenizer), so the head must not mask them as padding."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, **kwargs)
        if new_num_tokens is not None:
            self.config.tokenizer_vocab_size = new_num_tokens
        native = getattr(self.config, "model", None)  # gpt124m's own keys, which it loads by
        if isinstance(native, dict):
            vocab = self.config.tokenizer_vocab_size or embeddings.weight.shape[0]
            native["vocab_size"] = vocab
            native["vocab_multiple"] = _multiple(vocab, embeddings.weight.shape[0], native)
        return embeddings

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, value):
        self.transformer.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        return_dict=None,
        **kwargs,
    ):
        """Causal LM forward, transformers-style.

        `attention_mask` (1 = token, 0 = padding) covers the cached tokens plus the new ones;
        positions count only real tokens, so a left-padded row computes what it would alone.
        `labels` are shifted inside (pass `labels=input_ids`); -100 is ignored. The cache may come
        as `cache` (transformers >= 5.24) or `past_key_values` (earlier versions).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("pass the KV cache as `cache` or `past_key_values`, not both")
        cache = cache if cache is not None else past_key_values
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if cache is not None and not isinstance(cache, DynamicCache):
            # A StaticCache (or any cache that hands back keys padded to a fixed length) would
            # break the causal mask, which counts the keys it is given.
            raise TypeError(
                f"the KV cache must be a transformers DynamicCache (the default), got "
                f"{type(cache).__name__}; cache_implementation='static' is not supported"
            )
        for flag in ("output_hidden_states", "output_attentions"):
            asked = kwargs.get(flag)
            if asked is None:  # not passed: the config's setting
                asked = getattr(self.config, flag, False)
            if asked:
                raise ValueError(
                    f"{flag}: not supported by this model's code; the --format gpt2 export "
                    "(GPT2LMHeadModel) has it"
                )
        if use_cache and cache is None and not self.training:
            cache = DynamicCache()
        if not use_cache:
            cache = None

        x = self.transformer.wte(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        if past + T > self.config.n_positions:
            raise ValueError(
                f"sequence length {past + T} exceeds the model's context "
                f"(n_positions={self.config.n_positions})"
            )
        if (
            attention_mask is not None
            and attention_mask.shape == (B, past + T)
            and bool(attention_mask.all())
        ):
            attention_mask = None  # generate always sends one; unpadded, plain causal is faster
        pos, mask = positions_and_mask(attention_mask, B, T, past, x.device)
        if position_ids is not None:
            pos = position_ids
        x = run_trunk(
            self.transformer, x, pos, mask, _CacheView(cache) if cache is not None else None
        )
        if labels is None and logits_to_keep:
            x = (
                x[:, -logits_to_keep:, :]
                if isinstance(logits_to_keep, int)
                else x[:, logits_to_keep]
            )
        logits = self.lm_head(x)
        real = self.config.tokenizer_vocab_size
        if real is not None and real < logits.size(-1):
            logits[..., real:] = torch.finfo(logits.dtype).min

        loss = None
        if labels is not None:
            loss = _causal_lm_loss(logits, labels, real, kwargs.get("num_items_in_batch"))
        output = CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        return output if return_dict else output.to_tuple()


def _multiple(vocab: int, rows: int, native: dict) -> int:
    """A `vocab_multiple` that pads `vocab` to exactly `rows`: the one recorded if it still does,
    else 1 (no padding) or, failing that, `rows` itself."""
    for multiple in (native.get("vocab_multiple", 64), 1, rows):
        if -(-vocab // multiple) * multiple == rows:
            return multiple
    raise ValueError(f"{rows} embedding rows cannot hold a vocabulary of {vocab}")


def _causal_lm_loss(logits, labels, vocab, num_items_in_batch=None):
    """Next-token cross-entropy (the network's, in fp32 without an fp32 copy of the logits); a
    token count from the Trainer makes accumulation exact."""
    targets = labels[:, 1:].to(logits.device).reshape(-1)
    flat = logits[:, :-1, :].reshape(-1, logits.size(-1))
    if num_items_in_batch is None:
        return cross_entropy(flat, targets, vocab)
    return cross_entropy(flat, targets, vocab, reduction="sum") / num_items_in_batch
