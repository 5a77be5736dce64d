"""The model card's usage snippets, run unchanged in a fresh process that cannot import gpt124m.

That process is what a Hub user has: torch and transformers, and the repo the card names, here
served offline from an HF cache (HF_HOME) where the fixtures published each export.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from gpt124m.generate import GenerationConfig, generate
from gpt124m.hf.card import PROMPT
from gpt124m.tokenizer import get_tokenizer

from .conftest import publish_to_cache

HARNESS = r"""
import json, sys
sys.modules["gpt124m"] = None  # exported code must stand alone: importing gpt124m now fails
import transformers

lengths = []  # sequence lengths that generate returned, to check the snippets' length limits
original_generate = transformers.GenerationMixin.generate

def recording_generate(self, *args, **kwargs):
    out = original_generate(self, *args, **kwargs)
    lengths.append((out if hasattr(out, "shape") else out.sequences).shape[-1])
    return out

transformers.GenerationMixin.generate = recording_generate
# Every warning the snippets raise, through Python's warnings or transformers' logger.
import logging, warnings
said = []

class Collect(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())

transformers.logging.get_logger().addHandler(Collect(logging.WARNING))
job = json.loads(sys.stdin.read())

def run(code, name):
    namespace = {}
    lengths.clear()
    said.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, name, "exec"), namespace)
    return namespace, said + [str(w.message) for w in caught]

report = []
for i, code in enumerate(job["snippets"]):
    # First the same snippet against a stock GPT-2 repo: what this transformers says anyway.
    stock = code.replace(f'"{job["repo"]}"', f'"{job["stock_repo"]}"')
    _, stock_warnings = run(stock, f"<card snippet {i}, stock GPT-2>")
    namespace, said_here = run(code, f"<card snippet {i}>")
    entry = {"lengths": list(lengths), "warnings": said_here, "stock_warnings": stock_warnings}
    if "outputs" in namespace:
        entry["pipeline"] = namespace["outputs"]
    else:
        entry["output_ids"] = namespace["output_ids"].tolist()
    report.append(entry)
print("REPORT " + json.dumps(report))
"""


CODE_FETCHED = "A new version of the following files was downloaded from"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


STOCK_REPO = "stock/gpt2-tiny"


@pytest.fixture(scope="module")
def stock_repo(hf_home, tmp_path_factory) -> str:
    """A GPT-2 laid out as the `gpt2` hub repo is (transformers' own save_pretrained, its
    tokenizer files and a tokenizer config of just `model_max_length`), published offline."""
    transformers = pytest.importorskip("transformers")
    from gpt124m.tokenizer import vocab_files

    folder = tmp_path_factory.mktemp("stock-gpt2")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    encoder_json, vocab_bpe = vocab_files()
    shutil.copy(encoder_json, folder / "vocab.json")
    shutil.copy(vocab_bpe, folder / "merges.txt")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
    publish_to_cache(hf_home, STOCK_REPO, folder)
    return STOCK_REPO


@pytest.mark.parametrize("which", ["remote_dir", "gpt2_dir"])
def test_card_snippets_run_unchanged_against_the_export(
    which, request, repo_ids, native_model, hf_home, stock_repo, tmp_path
):
    pytest.importorskip("transformers")
    out_dir = request.getfixturevalue(which)
    snippets = python_blocks((out_dir / "README.md").read_text())
    assert len(snippets) == 2
    assert all(f'"{repo_ids[which]}"' in snippet for snippet in snippets)
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_MODULES_CACHE": str(hf_home / "modules"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS],
        input=json.dumps({"snippets": snippets, "repo": repo_ids[which], "stock_repo": stock_repo}),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    pipeline_report, generate_report = json.loads(line.removeprefix("REPORT "))

    # Both snippets raise no warning that a stock GPT-2 does not raise in this transformers (e.g.
    # max_new_tokens vs a stored max_length; some transformers versions warn about their own
    # pipeline defaults for any model), bar the notice that remote code was fetched without a
    # pinned revision: any remote-code model prints it once, on its first download.
    for report in (pipeline_report, generate_report):
        ours = [w for w in report["warnings"] if not w.startswith(CODE_FETCHED)]
        assert [w for w in ours if w not in report["stock_warnings"]] == []

    # pipeline(..., do_sample=True, max_new_tokens=30, ...): random text continuing the prompt
    tokenizer = get_tokenizer()
    prompt_ids = tokenizer.encode(PROMPT)
    outputs = pipeline_report["pipeline"]
    assert isinstance(outputs, list) and len(outputs) == 1
    text = outputs[0]["generated_text"]
    assert isinstance(text, str) and text.startswith(PROMPT) and len(text) > len(PROMPT)
    assert len(pipeline_report["lengths"]) == 1
    assert pipeline_report["lengths"][0] <= len(prompt_ids) + 30

    # model.generate(..., do_sample=False): exactly our greedy continuation
    expected = generate(native_model, [prompt_ids], GenerationConfig(max_new_tokens=30))[0]
    assert generate_report["output_ids"][0] == prompt_ids + expected
