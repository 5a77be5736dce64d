"""The options `generate` and `chat` share (model, sampling, device), so both read them alike."""

from __future__ import annotations

from dataclasses import dataclass

from gpt124m.flags import DECODE_COMPILE_HELP, DEVICE_HELP, WEIGHT_PRECISIONS, option


@dataclass(kw_only=True)
class SamplingOptions:
    model: str = option(help="model directory, GPT-2 directory or hub id")
    max_new_tokens: int = option(64, "tokens to generate at most")
    temperature: float = option(0.8, "0 means greedy")
    top_k: int = option(50, "0 disables top-k")
    top_p: float = option(1.0, "nucleus mass in (0, 1]")
    repetition_penalty: float = option(1.0, "1 disables it")
    seed: int | None = option(None, "sampling seed (default: random)")
    device: str = option("auto", DEVICE_HELP)
    precision: str = option("fp32", "the weights' precision", choices=WEIGHT_PRECISIONS)
    compile: bool = option(False, DECODE_COMPILE_HELP)


def generation_config(opts: SamplingOptions, *, stop: tuple[str, ...] = ()):
    """A validated GenerationConfig; errors name the flag (`--top-p: ...`)."""
    from gpt124m.generate import GenerationConfig

    if opts.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {opts.max_new_tokens}")
    cfg = GenerationConfig(
        max_new_tokens=opts.max_new_tokens,
        do_sample=opts.temperature > 0,
        temperature=opts.temperature,
        top_k=opts.top_k,
        top_p=opts.top_p,
        repetition_penalty=opts.repetition_penalty,
        seed=opts.seed,
        stop=stop,
    )
    try:
        cfg.validate()
    except ValueError as e:  # messages start with the field name: show it as the flag
        field = str(e).split()[0]
        raise ValueError(f"--{field.replace('_', '-')}: {e}") from None
    return cfg
