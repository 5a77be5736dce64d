"""Model shapes as typed data, plus the named presets.

Everything here is arithmetic on integers: describing or sizing even the 175B preset allocates
nothing, so `gpt124m info --preset gpt3-175b` is instant on a laptop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

GPT2_VOCAB_SIZE = 50257  # GPT-2's BPE vocabulary: the ids a model reads and predicts
VOCAB_MULTIPLE = 64  # embedding rows are padded to a multiple of this (50257 -> 50304) for speed


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a GPT-2-architecture decoder (pre-LN, fused qkv, tied embeddings, biases)."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = GPT2_VOCAB_SIZE
    vocab_multiple: int = VOCAB_MULTIPLE
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "vocab_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"ModelConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows: `vocab_size` rounded up to `vocab_multiple`, private to the model.

        The extra rows only make the output matmul a friendlier shape; their logits are cut off
        inside `GPT.forward`, so no id >= `vocab_size` is ever scored, predicted or sampled.
        """
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    def num_params(self, *, include_embeddings: bool = True) -> int:
        """Exact parameter count (lm_head is tied to wte, so it adds nothing)."""
        d = self.n_embd
        per_layer = 12 * d * d + 13 * d  # ln_1, c_attn, attn.c_proj, ln_2, c_fc, mlp.c_proj
        total = self.n_layer * per_layer + 2 * d  # + ln_f
        if include_embeddings:
            total += self.padded_vocab_size * d + self.block_size * d
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6N plus the attention term (PaLM, app. B)."""
        t = seq_len or self.block_size
        n = self.num_params(include_embeddings=False) + self.padded_vocab_size * self.n_embd
        return 6 * n + 12 * self.n_layer * self.n_embd * t

    def memory_bytes(self) -> dict[str, int]:
        """Bytes for weights alone and for AdamW training state (weights, grads, two moments)."""
        p = self.num_params()
        return {"fp32_weights": 4 * p, "bf16_weights": 2 * p, "adamw_training_fp32": 16 * p}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Preset:
    config: ModelConfig
    description: str


def _gpt3(n_layer: int, n_head: int, n_embd: int) -> ModelConfig:
    return ModelConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=2048)


_GPT3_NOTE = (
    "GPT-3 paper (Brown et al. 2020, Table 2.1) shape with context 2048. Attention is dense in every "
    "layer here; the paper alternated dense and locally banded sparse layers."
)

PRESETS: dict[str, Preset] = {
    "gpt2": Preset(
        ModelConfig(), "GPT-2 124M: the GPT-124M shape (12 layers, 12 heads, 768 dims)."
    ),
    "gpt2-medium": Preset(ModelConfig(n_layer=24, n_head=16, n_embd=1024), "GPT-2 medium, 350M."),
    "gpt2-large": Preset(ModelConfig(n_layer=36, n_head=20, n_embd=1280), "GPT-2 large, 774M."),
    "gpt2-xl": Preset(ModelConfig(n_layer=48, n_head=25, n_embd=1600), "GPT-2 XL, 1.5B."),
    "gpt3-small": Preset(_gpt3(12, 12, 768), "GPT-3 Small, 125M. " + _GPT3_NOTE),
    "gpt3-medium": Preset(_gpt3(24, 16, 1024), "GPT-3 Medium, 350M. " + _GPT3_NOTE),
    "gpt3-large": Preset(_gpt3(24, 16, 1536), "GPT-3 Large, 760M. " + _GPT3_NOTE),
    "gpt3-xl": Preset(
        _gpt3(24, 16, 2048),
        "GPT-3 XL, 1.3B. The paper lists 24 heads of 128 for d_model 2048, which does not divide; "
        "this keeps the width and the paper's head size: 16 heads of 128. " + _GPT3_NOTE,
    ),
    "gpt3-2.7b": Preset(_gpt3(32, 32, 2560), "GPT-3 2.7B. " + _GPT3_NOTE),
    "gpt3-6.7b": Preset(_gpt3(32, 32, 4096), "GPT-3 6.7B. " + _GPT3_NOTE),
    "gpt3-13b": Preset(
        _gpt3(40, 40, 5120),
        "GPT-3 13B. The paper lists d_model 5140 with 40 heads, which does not divide; this uses "
        "5120 (40 heads of 128), the nearest valid width. " + _GPT3_NOTE,
    ),
    "gpt3-175b": Preset(_gpt3(96, 96, 12288), "GPT-3 175B. " + _GPT3_NOTE),
    "tiny": Preset(
        ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64),
        "A toy for unit tests: runs in milliseconds on one CPU core.",
    ),
    "nano": Preset(
        ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=256),
        "The quickstart model: learns visible structure in a few CPU minutes.",
    ),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name].config
    except KeyError:
        raise ValueError(
            f"unknown model preset {name!r}; choose from: {', '.join(PRESETS)}"
        ) from None


def describe(config: ModelConfig) -> str:
    """Human-readable summary used by `gpt124m info`."""
    mem = config.memory_bytes()
    lines = [f"{k:>12}: {v}" for k, v in config.to_dict().items()]
    lines += [
        f"{'embed rows':>12}: {config.padded_vocab_size:,} (vocab_size padded to a multiple of "
        f"{config.vocab_multiple}; never predicted)",
        f"{'parameters':>12}: {config.num_params():,}",
        f"{'non-embed':>12}: {config.num_params(include_embeddings=False):,}",
        f"{'fp32 weights':>12}: {_gib(mem['fp32_weights'])}",
        f"{'bf16 weights':>12}: {_gib(mem['bf16_weights'])}",
        f"{'AdamW train':>12}: {_gib(mem['adamw_training_fp32'])}"
        " (fp32 weights + grads + 2 moments; activations extra)",
    ]
    return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB"
