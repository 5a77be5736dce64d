"""The model card (README.md) of an exported model, from what the run recorded.

Front matter is what the Hub reads (library, licence, data, base model, task, tags, CO2); the body
documents the architecture, the training configuration, evaluation results, the run's plots and
its energy estimate, each section only when the run recorded it, and usage snippets that load the
real repo id.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpt124m.config import ModelConfig

PROMPT = "Hello, I'm a language model,"
IMAGE_CAPTIONS = {
    "curves.png": "Training and validation loss",
    "hellaswag.png": "HellaSwag accuracy during training",
}
# Training scores HellaSwag under the completion convention (the seed's and build-nanogpt's):
# named, since lm-evaluation-harness's acc_norm on the same model differs by a few points.
METRIC_NAMES = {
    "val_loss": "validation loss",
    "hellaswag.acc_norm": "HellaSwag acc_norm (completion convention: mean loss per ending token)",
    "hellaswag.acc": "HellaSwag acc (completion convention: summed loss)",
    "hellaswag.n": "HellaSwag examples",
}
SUMMARY_ROWS = (
    ("device", "Hardware", "{}"),
    ("device_hours", "Device hours", "{:,.2f}"),
    ("power_w", "Assumed power per device (W)", "{:,.0f}"),
    ("energy_kwh", "Energy (kWh)", "{:,.3f}"),
    ("grid_gco2_per_kwh", "Grid carbon intensity (gCO2eq/kWh)", "{:,.0f}"),
    ("co2_kg", "Emissions (kg CO2eq)", "{:,.3f}"),
)


@dataclass(frozen=True)
class CardInfo:
    """Everything a card says; `training`, `results` and `summary` may be absent."""

    repo_id: str
    fmt: str  # "remote-code" or "gpt2"
    model_config: ModelConfig
    license: str = "mit"
    datasets: tuple[str, ...] = ()
    base_model: str | None = None
    training: Mapping[str, Any] | None = None
    results: Mapping[str, Any] | None = None
    summary: Mapping[str, Any] | None = None
    images: tuple[str, ...] = ()
    converted: bool = False  # `base_model` is this very checkpoint, exported again as is

    @property
    def remote_code(self) -> bool:
        return self.fmt == "remote-code"

    @property
    def fine_tuned(self) -> bool:
        tuned = run_kind(self.training) not in (None, "pretraining")
        return tuned or (bool(self.base_model) and not self.converted)


def run_kind(training: Mapping[str, Any] | None) -> str | None:
    """What the run was, from its recorded configuration: SFT runs record their `method`."""
    if not training:
        return None
    method = training.get("method")
    if method == "lora":
        lora = f"LoRA fine-tuning (r {training.get('lora_r')}, alpha {training.get('lora_alpha')})"
        return lora + (", merged into the base" if training.get("merge", True) else "")
    if method == "full":
        return "full fine-tuning"
    return "pretraining"


def public_path(text: str) -> str:
    """A local absolute path as a card may show it: relative to the working directory when under
    it, else only its last two parts. Anything else (relative paths, hub ids) as it is."""
    if not (text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", text)):
        return text
    path = Path(text).expanduser()
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return ".../" + "/".join(path.parts[-2:])


def front_matter(info: CardInfo) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "license": info.license,
        "datasets": list(info.datasets),
        "pipeline_tag": "text-generation",
        "tags": ["gpt124m", "gpt2", "causal-lm", "text-generation"]
        + (["custom_code"] if info.remote_code else []),
        "language": ["en"],
    }
    if info.base_model:
        meta["base_model"] = info.base_model
    co2 = (info.summary or {}).get("co2_kg")
    if isinstance(co2, (int, float)):
        meta["co2_eq_emissions"] = {
            "emissions": round(co2 * 1000, 3),  # the Hub counts grams
            "source": "gpt124m estimate: device hours x power x grid carbon intensity",
            "training_type": "fine-tuning" if info.fine_tuned else "pre-training",
            **({"hardware_used": str(info.summary["device"])} if "device" in info.summary else {}),
        }
    return meta


def render_card(info: CardInfo) -> str:
    name = info.repo_id.rstrip("/").split("/")[-1]
    sections = [
        "---\n" + yaml.safe_dump(front_matter(info), sort_keys=False) + "---",
        f"# {name}",
        _intro(info),
        _usage(info),
        _architecture(info),
        _training(info),
        _results(info),
        _plots(info),
        _environment(info),
        _limitations(),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _stored_shape(info: CardInfo) -> ModelConfig:
    """The shape of the weights the export holds: a GPT-2 export keeps only the real
    vocabulary's rows, so its parameter count is that of `GPT2LMHeadModel`."""
    c = info.model_config
    return c if info.remote_code else dataclasses.replace(c, vocab_multiple=1)


def _intro(info: CardInfo) -> str:
    c = _stored_shape(info)
    origin = ""
    if info.converted:
        origin = f", [{info.base_model}](https://huggingface.co/{info.base_model}) as is"
    elif info.fine_tuned:
        kind = run_kind(info.training)
        how = f" ({kind})" if kind not in (None, "pretraining") else ""
        local = (info.training or {}).get("base_model")
        if info.base_model:
            base = f" from [{info.base_model}](https://huggingface.co/{info.base_model})"
        elif isinstance(local, str) and local:
            base = f" from the local model `{public_path(local)}`"
        else:
            base = ""
        origin = f", fine-tuned{base}{how}"
    made = "exported" if info.converted else "trained and exported"
    text = (
        f"A GPT-2-architecture language model with {c.num_params():,} parameters "
        f"({c.n_layer} layers, {c.n_head} heads, {c.n_embd} dimensions, context {c.block_size})"
        f"{origin}, {made} with gpt124m. "
        "It uses GPT-2's BPE tokenizer."
    )
    if info.remote_code:
        text += (
            " The modeling code ships with the weights (`trust_remote_code=True`) and needs only "
            "torch and transformers."
        )
    else:
        text += (
            " It is a standard GPT-2 checkpoint: `GPT2LMHeadModel` loads it with no custom code."
        )
    return text


def usage_snippets(info: CardInfo) -> tuple[str, str]:
    """The pipeline snippet and the `generate` snippet, naming `info.repo_id`."""
    repo = info.repo_id
    trust = ", trust_remote_code=True" if info.remote_code else ""
    pipe = (
        "from transformers import AutoTokenizer, pipeline\n"
        "\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}"{trust})\n'
        "generator = pipeline(\n"
        f'    "text-generation", model="{repo}", tokenizer=tokenizer{trust}, device="cpu"\n'
        ")\n"
        "outputs = generator(\n"
        f'    "{PROMPT}",\n'
        "    do_sample=True,\n"
        "    max_new_tokens=30,\n"
        "    temperature=0.9,\n"
        "    top_p=0.5,\n"
        "    top_k=50,\n"
        ")\n"
        'print(outputs[0]["generated_text"])\n'
    )
    generate = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}"{trust})\n'
        f'model = AutoModelForCausalLM.from_pretrained("{repo}"{trust})\n'
        f'inputs = tokenizer(["{PROMPT}"], return_tensors="pt")\n'
        "output_ids = model.generate(**inputs, max_new_tokens=30, do_sample=False)\n"
        "print(tokenizer.decode(output_ids[0], skip_special_tokens=True))\n"
    )
    return pipe, generate


def _usage(info: CardInfo) -> str:
    pipe, generate = usage_snippets(info)
    return (
        "## Usage\n\n"
        "With a `pipeline`:\n\n"
        f"```python\n{pipe}```\n\n"
        "With `generate` (greedy here; the KV cache is on by default):\n\n"
        f"```python\n{generate}```\n\n"
        "With gpt124m itself:\n\n"
        f'```bash\ngpt124m generate --model {info.repo_id} --prompt "{PROMPT}"\n```'
    )


def _architecture(info: CardInfo) -> str:
    c = _stored_shape(info)
    vocab = (
        f"{c.vocab_size:,}"
        if not info.remote_code or c.padded_vocab_size == c.vocab_size
        else f"{c.vocab_size:,} (embedding padded to {c.padded_vocab_size:,} rows, never generated)"
    )
    rows = [
        ("Layers", f"{c.n_layer}"),
        ("Attention heads", f"{c.n_head} (head size {c.head_dim})"),
        ("Embedding size", f"{c.n_embd}"),
        ("Context length", f"{c.block_size:,}"),
        ("Vocabulary", vocab),
        (
            "Parameters",
            f"{c.num_params():,} ({c.num_params(include_embeddings=False):,} non-embedding)",
        ),
        ("Training FLOPs per token", f"{c.flops_per_token():,}"),
        ("Block", "pre-LayerNorm, fused QKV, GELU (tanh) MLP 4x, biases"),
        ("Output head", "tied to the token embedding"),
        ("Dropout", f"{c.dropout}"),
    ]
    return "## Architecture\n\n" + _table(("", ""), rows)


def _training(info: CardInfo) -> str:
    parts = []
    kind = run_kind(info.training)
    if kind:
        parts.append(f"Run type: {kind}.")
    if info.training:
        rows = [(f"`{k}`", _fmt(v, k)) for k, v in _flatten(info.training)]
        parts.append("Training configuration:\n\n" + _table(("setting", "value"), rows))
    summary = info.summary or {}
    facts = []
    if isinstance(summary.get("tokens_seen"), (int, float)):
        facts.append(f"tokens seen: {summary['tokens_seen']:,.0f}")
    if isinstance(summary.get("wall_time_s"), (int, float)):
        seconds = summary["wall_time_s"]
        wall = f"{seconds / 3600:,.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
        facts.append(f"wall time: {wall}")
    if summary.get("device"):
        facts.append(f"hardware: {summary['device']}")
    if facts:
        parts.append("Run: " + "; ".join(facts) + ".")
    return "## Training\n\n" + "\n\n".join(parts) if parts else ""


def _results(info: CardInfo) -> str:
    if not info.results:
        return ""
    rows = [(METRIC_NAMES.get(k, k), _fmt(v, k)) for k, v in _flatten(info.results)]
    return "## Evaluation\n\n" + _table(("metric", "value"), rows)


def _plots(info: CardInfo) -> str:
    if not info.images:
        return ""
    body = "\n\n".join(f"![{IMAGE_CAPTIONS.get(n, n)}]({n})" for n in info.images)
    return "## Training curves\n\n" + body


def _environment(info: CardInfo) -> str:
    summary = info.summary or {}
    rows = [
        (label, _small(summary[key]) or fmt.format(summary[key]))
        for key, label, fmt in SUMMARY_ROWS
        if key in summary
    ]
    if not rows:
        return ""
    return (
        "## Environmental impact\n\n"
        "Estimated from the run summary as device hours x assumed power per device x grid "
        "carbon intensity (the method of Lacoste et al., 2019); the assumed power is a typical "
        "draw, not a measurement.\n\n" + _table(("", ""), rows)
    )


def _limitations() -> str:
    return (
        "## Limitations\n\n"
        "A small language model trained on web text: it continues text fluently but states "
        "falsehoods, repeats itself, and reproduces biases of its data. It has no safety tuning; "
        "do not use it for decisions about people or where factual accuracy matters."
    )


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def _small(value: Any) -> str | None:
    """Two significant digits for a positive quantity under 0.01 (a CPU run's energy), which
    a fixed number of decimals would print as 0."""
    if isinstance(value, float) and 0 < value < 0.01:
        return f"{value:.2g}"
    return None


def _fmt(value: Any, key: str = "") -> str:
    """A setting or result for a table cell: counts with thousands separators, but seeds (names,
    not quantities) as written; local paths made public (`public_path`)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value) if key.rsplit(".", 1)[-1].endswith("seed") else f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v, key) for v in value)
    if isinstance(value, str):
        value = public_path(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)
