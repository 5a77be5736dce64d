"""Instruction templates shared by SFT, `gpt124m chat` and the demo, so all three agree."""

from __future__ import annotations

ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
)
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
)
TEMPLATES = ("seed", "alpaca")


def format_prompt(instruction: str, input_text: str = "", template: str = "seed") -> str:
    """The prompt up to and including the response header; the model continues from here."""
    instruction, input_text = instruction.strip(), (input_text or "").strip()
    if template == "seed":
        body = instruction + (f"\n\n{input_text}" if input_text else "")
        return f"### Instruction:\n{body}\n\n### Response:\n"
    if template == "alpaca":
        if input_text:
            return (
                f"{ALPACA_PREAMBLE_INPUT}### Instruction:\n{instruction}\n\n"
                f"### Input:\n{input_text}\n\n### Response:\n"
            )
        return f"{ALPACA_PREAMBLE}### Instruction:\n{instruction}\n\n### Response:\n"
    raise ValueError(f"unknown template {template!r}; choose from: {', '.join(TEMPLATES)}")
