"""transformers config for gpt124m models (shipped with exported models as remote code).

This file runs where only torch and transformers are installed: it must not import gpt124m.
"""

from transformers import PretrainedConfig


class GPT124MConfig(PretrainedConfig):
    """A GPT-2-architecture decoder whose embedding matrix may be padded past the tokenizer.

    `vocab_size` counts embedding rows (padded to a multiple of 64 for speed); ids from
    `tokenizer_vocab_size` on are padding, and the model gives them the lowest finite logit so
    they are never generated. Set `tokenizer_vocab_size` to None to expose every row.
    """

    model_type = "gpt124m"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "n_positions",
    }

    def __init__(
        self,
        vocab_size=50304,
        tokenizer_vocab_size=50257,
        n_positions=1024,
        n_embd=768,
        n_layer=12,
        n_head=12,
        dropout=0.0,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        use_cache=True,
        bos_token_id=50256,
        eos_token_id=50256,
        tie_word_embeddings=True,
        **kwargs,
    ):
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if tokenizer_vocab_size is not None and not 0 < tokenizer_vocab_size <= vocab_size:
            raise ValueError(
                f"tokenizer_vocab_size ({tokenizer_vocab_size}) must be in [1, vocab_size={vocab_size}]"
            )
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.vocab_size = vocab_size
        self.tokenizer_vocab_size = tokenizer_vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.use_cache = use_cache
