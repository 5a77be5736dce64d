import argparse
import dataclasses
import re

import pytest

from gpt124m.sft.config import NOT_FLAGS, SFTConfig, load_sft_recipe
from gpt124m.sft.config import recipe_names as sft_recipe_names
from gpt124m.train.config import (
    TrainConfig,
    add_config_arguments,
    config_from_args,
    load_recipe,
    recipe_names,
)

from ..conftest import needs_muon


def parse(argv, recipe=None):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return config_from_args(p.parse_args(argv), TrainConfig, recipe=recipe)


def test_seed_recipe_matches_the_seed_run():
    cfg = parse([], recipe="gpt124m-fineweb-edu")
    assert cfg.model == "gpt2" and cfg.seq_len == 1024 and cfg.micro_batch_size == 12
    assert cfg.total_batch_tokens == 589_824 and cfg.max_steps == 33_908
    assert (cfg.max_lr, cfg.min_lr, cfg.warmup_steps) == (1.8e-3, 1.8e-4, 100)
    assert (cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.precision) == (0.9, 0.95, 0.1, "bf16")
    assert (cfg.eval_every, cfg.hellaswag_every, cfg.sample_every, cfg.checkpoint_every) == (
        250,
        500,
        1000,
        1000,
    )
    assert cfg.grad_accum_steps(world_size=8) == 6


def test_gpt2_10b_recipe():
    cfg = parse([], recipe="gpt2-10b")
    assert (cfg.max_lr, cfg.warmup_steps, cfg.max_steps, cfg.total_batch_tokens) == (
        6e-4,
        715,
        19_073,
        524_288,
    )


def test_cli_flags_override_recipe_and_all_recipes_load():
    cfg = parse(
        ["--max-steps", "7", "--no-compile", "--sample-prompts", "a", "b"], recipe="gpt2-10b"
    )
    assert cfg.max_steps == 7 and cfg.compile is False and cfg.sample_prompts == ["a", "b"]
    assert cfg.max_lr == 6e-4
    for name in recipe_names():
        TrainConfig(**load_recipe(name)).validate()
    assert {"gpt124m-fineweb-edu", "gpt2-10b", "quickstart"} <= set(recipe_names())


def defaults(config_cls) -> dict:
    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(config_cls)
    }


@pytest.mark.parametrize(
    "config_cls, names, load",
    [(TrainConfig, recipe_names, load_recipe), (SFTConfig, sft_recipe_names, load_sft_recipe)],
)
def test_recipes_state_only_what_differs_from_the_defaults(config_cls, names, load):
    """A recipe is read as "the defaults, except": a key restating a default hides what is
    special about the recipe, and would silently pin a value the defaults later change."""
    base = defaults(config_cls)
    for name in names():
        restated = {k: v for k, v in load(name).items() if k in base and base[k] == v}
        assert not restated, f"{name} restates defaults: {restated}"


def test_indivisible_batch_is_a_clear_error():
    cfg = TrainConfig(micro_batch_size=3, seq_len=100, total_batch_tokens=1000)
    with pytest.raises(ValueError, match="not divisible"):
        cfg.grad_accum_steps(world_size=2)


def test_bad_values_and_recipes_are_named(tmp_path):
    with pytest.raises(SystemExit):  # the flag's choices, from the field
        parse(["--precision", "fp8"])
    with pytest.raises(ValueError, match="--precision 'fp8': choose from auto, fp32"):
        TrainConfig(precision="fp8").validate()  # the library checks the same choices
    with pytest.raises(ValueError, match="--grad-clip 0.0: must be positive"):
        parse(["--grad-clip", "0"])
    with pytest.raises(ValueError, match="--peak-flops 0.0: must be positive"):
        parse(["--peak-flops", "0"])
    with pytest.raises(ValueError, match="--power-watts -5.0: must be a finite number >= 0"):
        parse(["--power-watts", "-5"])
    with pytest.raises(ValueError, match="--grid-gco2-per-kwh -1.0: must be a finite number"):
        parse(["--grid-gco2-per-kwh", "-1"])
    # inf was taken, and the summary said "~inf kg CO2e"
    with pytest.raises(ValueError, match="--grid-gco2-per-kwh inf: must be a finite number"):
        parse(["--grid-gco2-per-kwh", "inf"])
    with pytest.raises(ValueError, match="--peak-flops inf: must be positive"):
        parse(["--peak-flops", "inf"])
    parse(["--power-watts", "0", "--grid-gco2-per-kwh", "0"])  # no estimate: allowed
    # what periodic work reads is refused at the start, not at its first turn
    for flags, message in (
        (["--sample-max-new-tokens", "-1"], "--sample-max-new-tokens -1: must be >= 1"),
        (["--sample-prompts", ""], "--sample-prompts ['']: each prompt needs some text"),
        (["--val-tokens", "0"], "--val-tokens 0: must be >= 1"),
        (["--hellaswag-every", "-1"], "--hellaswag-every -1: must be >= 0"),
        (["--hellaswag-every", "5", "--hellaswag-limit", "0"], "--hellaswag-limit 0: must be"),
        (["--seed", str(2**64)], "--seed 18446744073709551616: must be in [0, 2**63)"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            parse(flags)
    parse(["--sample-every", "0", "--sample-max-new-tokens", "0"])  # not sampled: not read
    # AdamW's own settings, named by their flags (torch's message names neither)
    for flags, message in (
        (["--beta1", "2"], "--beta1 2.0: must be in [0, 1)"),
        (["--beta2", "-0.1"], "--beta2 -0.1: must be in [0, 1)"),
        (["--eps", "0"], "--eps 0.0: must be positive"),
        (["--weight-decay", "nan"], "--weight-decay nan: must be >= 0"),
        (["--max-lr", "inf"], "--max-lr inf: must be positive"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            parse(flags)
    # a mistyped local HellaSwag file is refused at the start, not a run without its scores
    typo = ["--hellaswag-every", "100", "--hellaswag-data", str(tmp_path / "hellaswg.jsonl")]
    with pytest.raises(ValueError, match="--hellaswag-data .*hellaswg.jsonl': no such file"):
        parse(typo)
    parse(typo[2:])  # not evaluated: not read
    with pytest.raises(ValueError, match="unknown recipe"):
        load_recipe("nope")
    bad = tmp_path / "r.yaml"
    bad.write_text("max_stepz: 3\n")
    with pytest.raises(ValueError, match="max_stepz"):
        load_recipe(str(bad))
    # each value has its field's type, and a file that is not YAML is said in one line
    for text, message in (
        ("max_steps: [1\n", "not valid YAML at line 2"),
        ("max_steps: abc\n", "max_steps is 'abc', not int"),
        ("max_steps: 1.5\n", "max_steps is 1.5, not int"),
        ('max_lr: "1e-3"\n', "max_lr is '1e-3', not float"),
        ("sample_prompts: hello\n", "sample_prompts is 'hello', not a list of str"),
        ("compile: 1\n", "compile is 1, not bool"),
    ):
        bad.write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)):
            load_recipe(str(bad))
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_recipe(str(bad))
    bad.write_text("max_lr: 1\nmicro_batch_size: auto\nhellaswag_data: null\n")
    assert load_recipe(str(bad)) == {
        "max_lr": 1,
        "micro_batch_size": "auto",
        "hellaswag_data": None,
    }


@pytest.mark.parametrize("config_cls, exclude", [(TrainConfig, ()), (SFTConfig, NOT_FLAGS)])
def test_every_flag_says_what_it_does_and_its_default(config_cls, exclude):
    p = argparse.ArgumentParser()
    add_config_arguments(p, config_cls, exclude=exclude)
    flags = [a for a in p._actions if a.dest != "help"]
    assert len(flags) == len(dataclasses.fields(config_cls)) - len(exclude)
    for action in flags:
        words = action.help.split("(default")[0].split()
        assert len(words) >= 2, f"{action.option_strings[0]} has no description"
        assert "default" in action.help, f"{action.option_strings[0]} does not state its default"
    helps = {a.dest: a.help for a in flags}
    if config_cls is SFTConfig:  # a subclass's wording wins over the pretraining one
        assert helps["max_lr"].startswith("peak learning rate (default: 5e-5 full")


@needs_muon
def test_optimizer_flags():
    assert parse([]).optimizer == "adamw"
    cfg = parse(["--optimizer", "muon", "--muon-lr", "0.03", "--muon-momentum", "0.9"])
    assert (cfg.optimizer, cfg.muon_lr, cfg.muon_momentum) == ("muon", 0.03, 0.9)
    cfg = parse([], recipe="gpt124m-fineweb-edu-muon")
    assert cfg.optimizer == "muon" and cfg.parallel == "ddp"
    seed = parse([], recipe="gpt124m-fineweb-edu")
    for name in ("model", "data_dir", "seq_len", "total_batch_tokens", "max_steps"):
        assert getattr(cfg, name) == getattr(seed, name), name  # same data and token budget


def test_muon_on_a_torch_without_it_is_a_one_line_error(monkeypatch):
    import torch

    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    with pytest.raises(ValueError, match=r"^--optimizer 'muon': needs torch.optim.Muon, new in "):
        parse(["--optimizer", "muon"]).validate()
    parse([]).validate()  # AdamW needs nothing new
