"""Export directories as files: layout, native loading, GPT-2 round trip, CLI, atomicity."""

from __future__ import annotations

import ast
import importlib.resources
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from gpt124m.checkpoint import read_config
from gpt124m.cli import main
from gpt124m.config import GPT2_VOCAB_SIZE
from gpt124m.generate import GenerationConfig, generate_text
from gpt124m.hf import export as export_mod
from gpt124m.hf.export import AUTO_MAP, NETWORK_FILE, REMOTE_FILES, export
from gpt124m.loading import load_model
from gpt124m.tokenizer import EOT_ID, get_tokenizer

from ..conftest import snapshot

REMOTE = importlib.resources.files("gpt124m.hf") / "remote"


def test_remote_code_directory_has_everything_transformers_needs(remote_dir, native_model):
    files = {p.name for p in remote_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "README.md",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        *REMOTE_FILES,
        NETWORK_FILE,
    } <= files
    config = json.loads((remote_dir / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert config["model_type"] == "gpt124m"
    assert config["architectures"] == ["GPT124MForCausalLM"]
    c = native_model.config
    shape = (c.n_layer, c.n_head, c.n_embd)
    assert (config["n_layer"], config["n_head"], config["n_embd"]) == shape
    assert (config["n_positions"], config["vocab_size"]) == (c.block_size, c.padded_vocab_size)
    assert config["tokenizer_vocab_size"] == GPT2_VOCAB_SIZE
    assert config["torch_dtype"] == "float32"
    for name in REMOTE_FILES:
        assert (remote_dir / name).read_text() == (REMOTE / name).read_text()
    network = importlib.resources.files("gpt124m") / "model.py"
    assert (remote_dir / NETWORK_FILE).read_text() == network.read_text()
    tok_config = json.loads((remote_dir / "tokenizer_config.json").read_text())
    assert tok_config["model_max_length"] == c.block_size
    assert tok_config["pad_token"] == "<|endoftext|>"
    gen = json.loads((remote_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == get_tokenizer().eot_id


def test_remote_code_directory_is_also_a_native_directory(remote_dir, native_dir, native_model):
    config = json.loads((remote_dir / "config.json").read_text())
    native_config = json.loads((native_dir / "config.json").read_text())
    for key in ("format", "format_version", "model", "training", "results"):
        assert config[key] == native_config[key]
    exported = load_file(str(remote_dir / "model.safetensors"))
    assert exported.keys() == load_file(str(native_dir / "model.safetensors")).keys()
    assert "lm_head.weight" not in exported
    loaded = load_model(remote_dir)
    for name, tensor in native_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_run_artefacts_are_copied(remote_dir, native_dir):
    for name in ("summary.json", "curves.png", "hellaswag.png"):
        assert (remote_dir / name).read_bytes() == (native_dir / name).read_bytes()


def test_remote_code_imports_only_torch_transformers_and_stdlib(remote_dir):
    allowed = {"torch", "transformers", "dataclasses", "typing", "__future__"}
    for name in (*REMOTE_FILES, NETWORK_FILE):
        tree = ast.parse((remote_dir / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = set() if node.level else {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{name} imports {roots - allowed}"


def test_the_adapter_builds_no_network_of_its_own():
    """Layers, attention and masks come from the shipped network file alone: a second copy of
    any of them in the adapter is how the two would drift apart."""
    tree = ast.parse((REMOTE / "modeling_gpt124m.py").read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    network = {"scaled_dot_product_attention", "LayerNorm", "Embedding", "GELU", "cumsum", "tril"}
    assert not used & network
    classes = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    assert classes == ["_CacheView", "GPT124MPreTrainedModel", "GPT124MForCausalLM"]


def test_gpt2_directory_has_transformers_gpt2_layout(gpt2_dir, native_model):
    config = json.loads((gpt2_dir / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["vocab_size"] == GPT2_VOCAB_SIZE
    assert "auto_map" not in config and "format" not in config
    assert not any(p.suffix == ".py" for p in gpt2_dir.iterdir())
    tensors = load_file(str(gpt2_dir / "model.safetensors"))
    d = native_model.config.n_embd
    assert tensors["transformer.wte.weight"].shape == (GPT2_VOCAB_SIZE, d)
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (d, 3 * d)  # Conv1D: [in, out]
    assert tensors["transformer.h.0.mlp.c_proj.weight"].shape == (4 * d, d)
    assert "lm_head.weight" not in tensors


def test_gpt2_round_trip_through_import_is_exact(gpt2_dir, native_model, tmp_path):
    loaded = load_model(gpt2_dir)
    original = native_model.state_dict()
    for name, tensor in loaded.state_dict().items():
        if name in ("transformer.wte.weight", "lm_head.weight"):
            assert torch.equal(tensor[:GPT2_VOCAB_SIZE], original[name][:GPT2_VOCAB_SIZE])
            assert not tensor[GPT2_VOCAB_SIZE:].any()  # padding rows come back as zeros
        else:
            assert torch.equal(tensor, original[name]), name
    ids = torch.randint(0, GPT2_VOCAB_SIZE, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = native_model(ids)
        theirs, _ = loaded(ids)
    assert torch.equal(theirs[..., :GPT2_VOCAB_SIZE], ours[..., :GPT2_VOCAB_SIZE])
    again = export(gpt2_dir, tmp_path / "again", fmt="gpt2")
    first = load_file(str(gpt2_dir / "model.safetensors"))
    second = load_file(str(again / "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("which", ["remote_dir", "gpt2_dir"])
def test_generate_cli_accepts_exported_directories(which, request, native_model, capsys):
    out_dir = request.getfixturevalue(which)
    prompt = "The meaning of life is"
    argv = ["generate", "--model", str(out_dir), "--prompt", prompt, "--temperature", "0"]
    assert main([*argv, "--max-new-tokens", "8", "--device", "cpu"]) == 0
    cfg = GenerationConfig(max_new_tokens=8)
    expected = generate_text(native_model, get_tokenizer(), [prompt], cfg)[0]
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize("which", ["remote_dir", "gpt2_dir"])
def test_hub_ids_of_exports_load_natively(which, request, repo_ids, offline_hub, capsys):
    """What users of a pushed model do: name its hub id (served here from an offline cache)."""
    local = load_model(request.getfixturevalue(which))
    from_hub = load_model(repo_ids[which])
    for name, tensor in local.state_dict().items():
        assert torch.equal(from_hub.state_dict()[name], tensor), name
    argv = ["generate", "--model", repo_ids[which], "--prompt", "Hi", "--temperature", "0"]
    assert main([*argv, "--max-new-tokens", "4", "--device", "cpu"]) == 0
    expected = generate_text(local, get_tokenizer(), ["Hi"], GenerationConfig(max_new_tokens=4))
    assert capsys.readouterr().out == expected[0] + "\n"


@pytest.mark.parametrize("which", ["gpt2_dir", "remote_dir"])
def test_exporting_a_hub_checkpoint_names_it_as_base_model(
    which, request, repo_ids, offline_hub, tmp_path
):
    """GPT-2's layout or a gpt124m (or the seed's) remote-code repo: attributed alike."""
    request.getfixturevalue(which)  # published to the offline hub
    hub_id = repo_ids[which]
    out = export(hub_id, tmp_path / "re", repo_id="bob/re-export")
    card = (out / "README.md").read_text()
    assert f"base_model: {hub_id}\n" in card.split("\n---\n")[0]
    # the same weights exported again: a conversion, not a fine-tune
    assert f"[{hub_id}](https://huggingface.co/{hub_id}) as is, exported with gpt124m" in card
    assert "fine-tun" not in card
    assert json.loads((out / "config.json").read_text())["training"]["preset"] == "tiny"


def test_the_card_counts_the_parameters_transformers_loads(hf_env, remote_dir, gpt2_dir):
    """Each format's card states the count of the model transformers builds from it: the padded
    embedding in the remote code, GPT-2's 50,257 rows in the gpt2 format."""
    auto = hf_env.AutoModelForCausalLM
    for out, model in (
        (remote_dir, auto.from_pretrained(str(remote_dir), trust_remote_code=True)),
        (gpt2_dir, hf_env.GPT2LMHeadModel.from_pretrained(str(gpt2_dir))),
    ):
        card = (out / "README.md").read_text()
        assert f"| Parameters | {model.num_parameters():,} (" in card, out.name
        assert f"language model with {model.num_parameters():,} parameters" in card, out.name


def test_metadata_that_would_change_transformers_settings_is_not_carried(
    native_model, remote_dir, tmp_path, caplog
):
    from gpt124m.checkpoint import save_pretrained

    metadata = {"dtype": "bfloat16", "step": 19073, "training": {"preset": "tiny"}}
    save_pretrained(native_model, tmp_path / "native", metadata=metadata)
    with caplog.at_level("WARNING", logger="gpt124m"):
        out = export(tmp_path / "native", tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and "dtype" not in config
    assert config["step"] == 19073 and config["training"] == {"preset": "tiny"}
    assert "not carrying metadata key 'dtype'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="gpt124m"):  # an export's own keys: no warning
        export(remote_dir, tmp_path / "again")
    assert "not carrying" not in caplog.text


def test_the_tuning_template_survives_an_export_of_an_export(native_model, tmp_path):
    """`chat` and the demo answer in the template a model was tuned with, read from its config:
    a GPT-2 export, exported again, must still say which."""
    from gpt124m.checkpoint import save_pretrained
    from gpt124m.sft.chat import trained_template

    sft = {"template": "alpaca", "method": "full"}
    source = save_pretrained(native_model, tmp_path / "tuned", metadata={"sft": sft})
    first = export(source, tmp_path / "gpt2", fmt="gpt2")
    for fmt in ("remote-code", "gpt2"):
        again = export(first, tmp_path / f"again-{fmt}", fmt=fmt)
        assert trained_template(read_config(again)) == "alpaca", fmt


def test_force_replaces_an_earlier_export_only(native_dir, gpt2_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(gpt2_dir, out)
    with pytest.raises(ValueError, match="holds an earlier export; pass --force"):
        export(native_dir, out)
    assert snapshot(out) == snapshot(gpt2_dir)
    export(native_dir, out, force=True)  # a gpt2 export, replaced by a remote-code one
    assert read_config(out)["model_type"] == "gpt124m" and (out / NETWORK_FILE).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or backup left
    export(native_dir, out, fmt="gpt2", force=True)  # and back
    assert read_config(out)["model_type"] == "gpt2" and not (out / NETWORK_FILE).exists()
    # hidden metadata (`hf download --local-dir` leaves .cache/) does not make it another thing
    (out / ".cache" / "huggingface").mkdir(parents=True)
    (out / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    export(native_dir, out, force=True)
    assert read_config(out)["model_type"] == "gpt124m"


def test_force_never_deletes_a_folder_that_is_not_an_export(native_dir, remote_dir, tmp_path):
    """A folder of training runs, a model directory the trainer wrote, an export with a file
    added: `--force` refuses each, naming why, and leaves every file as it was."""
    runs = tmp_path / "runs"
    for run in ("a", "b"):
        shutil.copytree(native_dir, runs / run / "checkpoints" / "step_0000010")
        (runs / run / "metrics.jsonl").write_text('{"step": 10}\n')
    with_notes = tmp_path / "notes"
    shutil.copytree(remote_dir, with_notes)
    (with_notes / "notes.txt").write_text("mine")
    trained = tmp_path / "trained"
    shutil.copytree(native_dir, trained)  # only names an export writes, but no export's config
    clone = tmp_path / "clone"  # `git clone` of the hub repo: its history is not ours to drop
    shutil.copytree(remote_dir, clone)
    (clone / ".git").mkdir()
    (clone / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    cases = [
        (runs, "holds a, a folder"),
        (with_notes, "holds notes.txt, which an export never writes"),
        (trained, "its config.json is not an export's"),
        (clone, "holds .git, a git repository"),
    ]
    for out, why in cases:
        before = snapshot(out)
        with pytest.raises(ValueError, match=f"not an earlier export \\({why}"):
            export(remote_dir, out, force=True)
        assert snapshot(out) == before, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clone", "notes", "runs", "trained"]


def test_failed_export_leaves_nothing_behind(native_dir, tmp_path, monkeypatch):
    def broken(info):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_mod, "render_card", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export(native_dir, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_bad_input(native_dir, tmp_path):
    with pytest.raises(ValueError, match="--format 'onnx'"):
        export(native_dir, tmp_path / "a", fmt="onnx")
    with pytest.raises(ValueError, match="source model directory"):
        export(native_dir, native_dir, force=True)
    source = tmp_path / "run" / "model"  # a run's model beside its checkpoints
    shutil.copytree(native_dir, source)
    (tmp_path / "run" / "checkpoints").mkdir()
    for holder in (tmp_path / "run", tmp_path):  # replacing it would delete the source
        with pytest.raises(ValueError, match="holds the source model"):
            export(source, holder, force=True)
        assert (source / "model.safetensors").is_file() and (
            tmp_path / "run" / "checkpoints"
        ).is_dir()
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        export(tmp_path / "missing", tmp_path / "b")
    # what `push` would refuse, refused here, before the card names it
    with pytest.raises(ValueError, match="--repo-id 'bad id!!': expected USER/NAME"):
        export(native_dir, tmp_path / "c", repo_id="bad id!!")
    with pytest.raises(ValueError, match="--license must not be empty"):
        export(native_dir, tmp_path / "c", license=" ")
    assert not (tmp_path / "c").exists()


def test_export_cli(native_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["export", str(native_dir), str(out), "--format", "gpt2", "--repo-id", "alice/tiny"]
    argv += ["--dataset", "karpathy/tinyshakespeare", "--base-model", "alice/base"]
    assert main([*argv, "--license", "apache-2.0"]) == 0
    stdout = capsys.readouterr().out
    assert f"{out} (gpt2)" in stdout and "model.safetensors" in stdout
    card = (out / "README.md").read_text()
    assert '"alice/tiny"' in card
    front = card.split("\n---\n")[0]
    assert "license: apache-2.0" in front and "- karpathy/tinyshakespeare" in front
    assert "base_model: alice/base" in front
    # the folder is as readable as any made here (the staging folder's 0o700 was kept)
    made = tmp_path / "made"
    made.mkdir()
    assert out.stat().st_mode & 0o777 == made.stat().st_mode & 0o777
    assert main(["export", str(native_dir), str(out)]) == 2
    assert "holds an earlier export; pass --force" in capsys.readouterr().err
    runs = tmp_path / "runs"
    (runs / "run1" / "checkpoints").mkdir(parents=True)
    (runs / "run1" / "metrics.jsonl").write_text("{}\n")
    assert main(["export", str(native_dir), str(runs), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"gpt124m export: error: {runs}: exists and is not an earlier export (holds run1, a "
        "folder; an export writes plain files only); --force replaces only an export: choose "
        "another OUT_DIR"
    )
    assert (runs / "run1" / "metrics.jsonl").read_text() == "{}\n"


def test_a_padded_batch_scores_each_row_as_alone_in_the_gpt2_export(hf_env, gpt2_dir):
    """`GPT2LMHeadModel.forward` counts positions from each row's start: the gpt2 export pads
    on the right (as GPT-2's own tokenizer), so a padded forward pass is each row's own."""
    tokenizer = hf_env.AutoTokenizer.from_pretrained(str(gpt2_dir))
    assert tokenizer.padding_side == "right" and tokenizer.pad_token_id == EOT_ID
    model = hf_env.GPT2LMHeadModel.from_pretrained(str(gpt2_dir)).eval()
    prompts = ["Hi there", "The quick brown fox jumps over the lazy dog"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        together = model(**batch).logits
        for i, prompt in enumerate(prompts):
            alone = model(**tokenizer([prompt], return_tensors="pt")).logits[0]
            real = batch["attention_mask"][i].bool()
            torch.testing.assert_close(together[i][real], alone, atol=1e-5, rtol=1e-5)


def test_local_paths_never_reach_the_cards_hub_metadata(native_model, tmp_path, monkeypatch):
    """A run tuned from `runs/base` on `data/my.jsonl` (relative paths that read like hub ids)
    records them as local; older metadata naming a path that exists is read as local too; and
    the flags take hub ids only."""
    from gpt124m.checkpoint import save_pretrained
    from gpt124m.sft.config import SFTConfig

    monkeypatch.chdir(tmp_path)
    save_pretrained(native_model, tmp_path / "runs" / "base")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "my.jsonl").write_text("{}\n")
    training = SFTConfig(base="runs/base", data="data/my.jsonl").to_dict()
    assert (training["base_model"], training["dataset"]) == ("./runs/base", "./data/my.jsonl")
    old = {**training, "base_model": "runs/base", "dataset": "data/my.jsonl"}
    for name, recorded in (("new", training), ("old", old)):
        save_pretrained(native_model, tmp_path / name, metadata={"training": recorded})
        out = export(tmp_path / name, tmp_path / f"{name}-export", repo_id="bob/tuned")
        front = (out / "README.md").read_text().split("\n---\n")[0]
        assert "base_model" not in front and "datasets: []" in front, front
        assert "huggingface.co/runs/base" not in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="--base-model './runs/base': expected USER/NAME"):
        export(tmp_path / "new", tmp_path / "x", base_model="./runs/base")
    with pytest.raises(ValueError, match="--dataset 'data/my.jsonl': a local path"):
        export(tmp_path / "new", tmp_path / "x", datasets=["data/my.jsonl"])


def test_a_model_with_tokens_beyond_gpt2s_is_exported_with_a_warning(tmp_path, caplog):
    """GPT-2 fine-tuned with an added special token: the export's tokenizer is GPT-2's, which
    can never produce it, so the export says so (the weights are still the model's)."""
    import dataclasses
    import logging

    from gpt124m.checkpoint import save_pretrained
    from gpt124m.config import get_preset
    from gpt124m.model import GPT

    grown = GPT(dataclasses.replace(get_preset("tiny"), vocab_size=GPT2_VOCAB_SIZE + 1))
    save_pretrained(grown, tmp_path / "grown")
    with caplog.at_level(logging.WARNING, logger="gpt124m.hf.export"):
        export(tmp_path / "grown", tmp_path / "out")
    assert "predicts 50,258 tokens, GPT-2's BPE has 50,257" in caplog.text
    caplog.clear()
    save_pretrained(GPT(get_preset("tiny")), tmp_path / "plain")
    with caplog.at_level(logging.WARNING, logger="gpt124m.hf.export"):
        export(tmp_path / "plain", tmp_path / "out2")
    assert "GPT-2's BPE" not in caplog.text
