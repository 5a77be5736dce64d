"""The generated model card: Hub front matter, sections from the run record, usage snippets."""

from __future__ import annotations

import re

import yaml

from gpt124m.config import get_preset
from gpt124m.hf.card import CardInfo, render_card, usage_snippets


def split_card(text: str) -> tuple[dict, str]:
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    assert match, "card must open with YAML front matter"
    return yaml.safe_load(match.group(1)), match.group(2)


def full_info(run_record, **overrides) -> CardInfo:
    fields = dict(
        repo_id="alice/gpt124m-fineweb",
        fmt="remote-code",
        model_config=get_preset("gpt2"),
        datasets=("HuggingFaceFW/fineweb-edu",),
        base_model=None,
        training=run_record["training"],
        results=run_record["results"],
        summary=run_record["summary"],
        images=("curves.png", "hellaswag.png"),
    )
    fields.update(overrides)
    return CardInfo(**fields)


def test_front_matter_has_the_keys_the_hub_reads(run_record):
    meta, _ = split_card(render_card(full_info(run_record, base_model="alice/gpt124m-base")))
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "mit"
    assert meta["datasets"] == ["HuggingFaceFW/fineweb-edu"]
    assert meta["base_model"] == "alice/gpt124m-base"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"gpt124m", "custom_code"} <= set(meta["tags"])
    co2 = meta["co2_eq_emissions"]
    assert co2["emissions"] == run_record["summary"]["co2_kg"] * 1000  # grams
    assert co2["hardware_used"] == run_record["summary"]["device"]
    assert co2["training_type"] == "fine-tuning"


def test_body_documents_architecture_training_results_plots_and_energy(run_record):
    _, body = split_card(render_card(full_info(run_record)))
    config = get_preset("gpt2")
    assert f"{config.num_params():,}" in body
    assert "| Layers | 12 |" in body and "| Context length | 1,024 |" in body
    assert "| `max_lr` | 0.0006 |" in body
    assert "| `schedule.warmup_steps` | 715 |" in body
    assert "| validation loss | 3.2845 |" in body
    assert (
        "| HellaSwag acc_norm (completion convention: mean loss per ending token) | 0.2967 |"
        in body
    )
    assert "| HellaSwag examples | 10,042 |" in body
    assert "![Training and validation loss](curves.png)" in body
    assert "(hellaswag.png)" in body
    assert "## Environmental impact" in body
    assert "| Energy (kWh) | 11.200 |" in body and "| Emissions (kg CO2eq) | 4.480 |" in body
    assert "tokens seen: 10,000,000,000" in body


def test_sections_without_data_are_left_out():
    info = CardInfo(repo_id="USER/NAME", fmt="remote-code", model_config=get_preset("tiny"))
    meta, body = split_card(render_card(info))
    for heading in ("## Training", "## Evaluation", "## Training curves", "## Environmental"):
        assert heading not in body
    assert "## Architecture" in body and "## Usage" in body
    assert "co2_eq_emissions" not in meta and "base_model" not in meta
    assert meta["datasets"] == []


def test_usage_snippets_name_the_repo_and_the_promised_calls(run_record):
    info = full_info(run_record)
    pipe, generate = usage_snippets(info)
    card = render_card(info)
    assert f"```python\n{pipe}```" in card and f"```python\n{generate}```" in card
    assert 'AutoTokenizer.from_pretrained("alice/gpt124m-fineweb", trust_remote_code=True)' in pipe
    assert 'pipeline(\n    "text-generation", model="alice/gpt124m-fineweb"' in pipe
    for arg in ("do_sample=True", "max_new_tokens=30", "temperature=0.9", "top_p=0.5", "top_k=50"):
        assert arg in pipe
    assert 'device="cpu"' in pipe
    assert "AutoModelForCausalLM.from_pretrained(" in generate and "model.generate(" in generate
    for snippet in (pipe, generate):
        compile(snippet, "snippet", "exec")


def test_gpt2_card_needs_no_remote_code(run_record):
    pipe, generate = usage_snippets(full_info(run_record, fmt="gpt2"))
    assert "trust_remote_code" not in pipe + generate
    meta, body = split_card(render_card(full_info(run_record, fmt="gpt2")))
    assert "custom_code" not in meta["tags"]
    assert "GPT2LMHeadModel" in body


def test_exported_card_uses_the_run_record(remote_dir, run_record, repo_ids):
    meta, body = split_card((remote_dir / "README.md").read_text())
    assert meta["datasets"] == [run_record["training"]["dataset"]]
    assert "| Layers | 2 |" in body
    assert "(curves.png)" in body and "(hellaswag.png)" in body
    repo = repo_ids["remote_dir"]
    assert f'AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)' in body
    assert f"# {repo.split('/')[1]}" in body
    assert "Run type: pretraining." in body
    assert meta["co2_eq_emissions"]["training_type"] == "pre-training"


def test_local_paths_and_seeds_are_written_for_a_public_card(run_record, tmp_path):
    training = {
        **run_record["training"],
        "seed": 1337,
        "out_dir": str(tmp_path / "runs" / "lora"),
        "base_model": str(tmp_path / "runs" / "quickstart" / "model"),
        "data": "my.jsonl",
        "method": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "merge": False,
    }
    card = render_card(full_info(run_record, training=training))
    _, body = split_card(card)
    assert str(tmp_path) not in card
    assert "| `seed` | 1337 |" in body and "| `data` | my.jsonl |" in body
    assert "| `out_dir` | .../runs/lora |" in body
    assert "fine-tuned from the local model `.../quickstart/model` (LoRA" in body
    assert "Run type: LoRA fine-tuning (r 4, alpha 8)." in body
