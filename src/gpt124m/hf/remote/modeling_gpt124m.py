"""transformers model for gpt124m checkpoints (shipped with exported models as remote code).

The GPT-2 architecture (pre-LayerNorm, fused qkv, tanh GELU, biases, lm_head tied to the token
embedding) with parameter names identical to gpt124m's own, so one `model.safetensors` serves
both this class and `gpt124m`. Attention is PyTorch's scaled_dot_product_attention; the KV cache is
transformers' Cache API (DynamicCache). This file runs where only torch and transformers are
installed: it must not import gpt124m.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_gpt124m import GPT124MConfig

# transformers 5 renamed the cache field of model outputs (and the forward argument) from
# `past_key_values` to `cache`; fill whichever this installed version has.
_OUTPUT_FIELDS = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
_CACHE_FIELD = "cache" if "cache" in _OUTPUT_FIELDS else "past_key_values"


class GPT124MAttention(nn.Module):
    def __init__(self, config: GPT124MConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.layer_idx = layer_idx
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.residual_scaled_init = True

    def forward(self, x, mask, cache, is_causal):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class GPT124MMLP(nn.Module):
    def __init__(self, config: GPT124MConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual_scaled_init = True

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class GPT124MBlock(nn.Module):
    def __init__(self, config: GPT124MConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT124MAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT124MMLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, mask, cache, is_causal):
        x = x + self.drop(self.attn(self.ln_1(x), mask, cache, is_causal))
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPT124MPreTrainedModel(PreTrainedModel):
    config_class = GPT124MConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["GPT124MBlock"]
    # transformers 4.x: generate may hand us a DynamicCache; a StaticCache it must not.
    _supports_cache_class = True
    _supports_static_cache = False

    def _init_weights(self, module):
        """GPT-2 init: N(0, 0.02), residual projections scaled by (2 * n_layer) ** -0.5."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "residual_scaled_init", False):
                std *= (2 * self.config.n_layer) ** -0.5
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class GPT124MForCausalLM(GPT124MPreTrainedModel, GenerationMixin):
    # {target: source}: transformers 5 reads the mapping, 4.x iterates the keys.
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPT124MConfig):
        super().__init__(config)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.n_positions, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(GPT124MBlock(config, i) for i in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

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
        if cache is not None and not isinstance(cache, Cache):
            raise TypeError(
                f"the KV cache must be a transformers Cache (e.g. DynamicCache), got {type(cache)}"
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
        mask, is_causal = None, False
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape != (B, past + T):
                raise ValueError(
                    f"attention_mask must have shape {(B, past + T)} (cached + new tokens), "
                    f"got {tuple(attention_mask.shape)}"
                )
            attention_mask = attention_mask.to(device=x.device, dtype=torch.bool)
            if bool(attention_mask.all()):
                attention_mask = None
        if attention_mask is not None:
            mask = _padded_causal_mask(attention_mask, T)
        elif past and T > 1:
            mask = _padded_causal_mask(
                torch.ones(B, past + T, dtype=torch.bool, device=x.device), T
            )
        else:
            is_causal = T > 1
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(past, past + T, device=x.device).unsqueeze(0)
            else:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]

        x = self.transformer.drop(x + self.transformer.wpe(position_ids))
        for block in self.transformer.h:
            x = block(x, mask, cache, is_causal)
        x = self.transformer.ln_f(x)
        if labels is None and logits_to_keep:
            x = (
                x[:, -logits_to_keep:, :]
                if isinstance(logits_to_keep, int)
                else x[:, logits_to_keep]
            )
        logits = self.lm_head(x)
        real = self.config.tokenizer_vocab_size
        if real is not None and real < logits.size(-1):
            logits[..., real:] = float("-inf")

        loss = None
        if labels is not None:
            loss = _causal_lm_loss(logits, labels, kwargs.get("num_items_in_batch"))
        output = CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        return output if return_dict else output.to_tuple()


def _padded_causal_mask(attention_mask, T):
    """Boolean [B, 1, T, S] mask: causal over the last T of S positions, padded keys hidden.

    A query always sees itself, so padding rows stay finite instead of softmaxing over nothing.
    """
    S = attention_mask.size(1)
    q_pos = torch.arange(S - T, S, device=attention_mask.device).unsqueeze(1)
    k_pos = torch.arange(S, device=attention_mask.device).unsqueeze(0)
    mask = (k_pos <= q_pos).unsqueeze(0) & attention_mask[:, None, :]
    mask |= (k_pos == q_pos).unsqueeze(0)
    return mask.unsqueeze(1)


def _causal_lm_loss(logits, labels, num_items_in_batch=None):
    """Next-token cross-entropy; a token count from the Trainer makes accumulation exact."""
    targets = labels[:, 1:].to(logits.device).reshape(-1)
    flat = logits[:, :-1, :].float().reshape(-1, logits.size(-1))
    if num_items_in_batch is None:
        return F.cross_entropy(flat, targets, ignore_index=-100)
    total = F.cross_entropy(flat, targets, ignore_index=-100, reduction="sum")
    return total / num_items_in_batch
