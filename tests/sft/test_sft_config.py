import argparse

import pytest

from gpt124m.sft.config import (
    SFTConfig,
    add_sft_arguments,
    load_sft_recipe,
    recipe_names,
    sft_config_from_args,
)
from gpt124m.sft.runner import resolve
from gpt124m.train.schedule import lr_at

from ..conftest import needs_muon


def parse(argv, recipe=None):
    p = argparse.ArgumentParser()
    add_sft_arguments(p)
    return sft_config_from_args(p.parse_args(argv), recipe=recipe)


def test_defaults_follow_the_seed_run_and_lora_has_its_own():
    full = parse(["--base", "gpt2"])
    assert (full.method, full.max_lr, full.weight_decay, full.epochs, full.batch_size) == (
        "full",
        5e-5,
        0.1,
        3.0,
        8,
    )
    assert (full.min_lr, full.warmup_fraction, full.grad_clip, full.precision) == (
        0.0,
        0.01,
        1.0,
        "fp32",
    )
    assert (full.template, full.val_fraction, full.split_seed, full.pad_to) == (
        "seed",
        0.1,
        0,
        "block",
    )
    lora = parse(["--base", "gpt2", "--method", "lora"])
    assert (lora.max_lr, lora.weight_decay) == (3e-4, 0.0)
    assert (lora.lora_r, lora.lora_alpha, lora.lora_dropout, lora.lora_targets, lora.merge) == (
        8,
        8,
        0.05,
        "default",
        True,
    )
    assert parse(["--base", "gpt2", "--method", "lora", "--max-lr", "1e-3"]).max_lr == 1e-3
    assert parse(["--base", "gpt2", "--no-merge"]).merge is False


def test_pretraining_only_fields_are_not_flags():
    p = argparse.ArgumentParser()
    add_sft_arguments(p)
    for flag, value in (
        ("--base", "x"),
        ("--data", "x"),
        ("--method", "lora"),
        ("--pad-to", "longest"),
    ):
        assert p.parse_known_args([flag, value])[1] == []
    for flag in ("--model", "--data-dir", "--total-batch-tokens"):
        assert p.parse_known_args([flag, "x"])[1] == [flag, "x"]
    meta = parse(["--base", "gpt2"]).to_dict()
    assert "model" not in meta and "data_dir" not in meta
    assert (meta["dataset"], meta["base_model"]) == ("tatsu-lab/alpaca", "gpt2")


def test_run_is_sized_from_the_data_and_epochs():
    cfg = resolve(parse(["--base", "gpt2"]), n_train=46_801, seq_len=1024, world_size=1)
    assert cfg.max_steps == 17_551  # ceil(3 * 46801 / 8)
    assert cfg.warmup_steps == 176  # ceil(1% of the steps)
    assert (cfg.micro_batch_size, cfg.total_batch_tokens) == (8, 8 * 1024)
    assert cfg.val_tokens == 1_048_576  # the seed's budget: 37 evaluations of 1M tokens < 1/3
    assert cfg.grad_accum_steps(world_size=1) == 1
    # the schedule warms up, then decays by cosine to exactly 0 on the last step
    lr = [
        lr_at(s, max_lr=cfg.max_lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
              max_steps=cfg.max_steps, schedule=cfg.schedule)
        for s in (0, cfg.warmup_steps - 1, cfg.max_steps - 1)
    ]  # fmt: skip
    assert lr == [pytest.approx(5e-5 / 176), pytest.approx(5e-5), 0.0]
    ddp = resolve(parse(["--base", "gpt2", "--micro-batch-size", "2"]), 100, 64, world_size=2)
    assert ddp.grad_accum_steps(world_size=2) == 2
    with pytest.raises(ValueError, match="--batch-size 8 is not divisible"):
        resolve(parse(["--base", "gpt2", "--micro-batch-size", "3"]), 100, 64, world_size=1)
    capped = resolve(
        parse(["--base", "gpt2", "--max-steps", "5", "--warmup-steps", "0"]), 100, 64, 1
    )
    assert (capped.max_steps, capped.warmup_steps) == (5, 0)
    # 5 steps x 8 x 64 tokens, evaluated at steps 0 and 5: (2560 / 3) / 2 tokens per evaluation
    assert capped.val_tokens == 2560 // (3 * 2)
    given = resolve(
        parse(["--base", "gpt2", "--max-steps", "5", "--val-tokens", "999"]), 100, 64, 1
    )
    assert given.val_tokens == 999


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="--base is required"):
        parse([])
    for flag, bad in (("--method", "qlora"), ("--pad-to", "max"), ("--precision", "fp8")):
        with pytest.raises(SystemExit):  # the flag's choices, from the field
            parse(["--base", "gpt2", flag, bad])
        field = flag.removeprefix("--").replace("-", "_")
        with pytest.raises(ValueError, match=f"{flag} '{bad}'"):  # and the library's check
            SFTConfig(base="gpt2", **{field: bad}).validate()
    with pytest.raises(ValueError, match="--val-fraction"):
        parse(["--base", "gpt2", "--val-fraction", "1.5"])
    for epochs in ("inf", "nan", "0"):
        with pytest.raises(ValueError, match="--epochs .*: must be positive"):
            parse(["--base", "gpt2", "--epochs", epochs])
    with pytest.raises(ValueError, match="--parallel 'fsdp': LoRA"):
        parse(["--base", "gpt2", "--method", "lora", "--parallel", "fsdp"])


def test_bundled_recipe_is_the_seed_run(tmp_path):
    assert "gpt124m-alpaca" in recipe_names()
    cfg = parse([], recipe="gpt124m-alpaca")
    assert (cfg.data, cfg.method, cfg.template, cfg.epochs, cfg.batch_size) == (
        "alpaca",
        "full",
        "seed",
        3,
        8,
    )
    assert (cfg.max_lr, cfg.weight_decay, cfg.precision) == (5e-5, 0.1, "fp32")
    assert parse(["--epochs", "1"], recipe="gpt124m-alpaca").epochs == 1
    # the recipe leaves lr and decay to the method: LoRA on it gets LoRA's, not full FT's
    lora = parse(["--method", "lora"], recipe="gpt124m-alpaca")
    assert (lora.max_lr, lora.weight_decay) == (3e-4, 0.0)
    bad = tmp_path / "r.yaml"
    bad.write_text("data_dir: x\n")
    with pytest.raises(ValueError, match="unknown fields data_dir"):
        load_sft_recipe(str(bad))
    with pytest.raises(ValueError, match="unknown recipe"):
        load_sft_recipe("nope")


@needs_muon
def test_sft_takes_the_optimizer_choice():
    assert parse(["--base", "gpt2"]).optimizer == "adamw"
    cfg = parse(["--base", "gpt2", "--optimizer", "muon", "--muon-lr", "0.002"])
    assert (cfg.optimizer, cfg.muon_lr) == ("muon", 0.002)
    with pytest.raises(SystemExit):
        parse(["--base", "gpt2", "--optimizer", "lion"])
    with pytest.raises(ValueError, match="--optimizer 'lion'"):
        SFTConfig(base="gpt2", optimizer="lion").validate()


def test_lora_settings_given_to_a_full_fine_tune_are_named_as_unused(caplog):
    with caplog.at_level("WARNING"):
        parse(["--base", "gpt2", "--lora-r", "4", "--no-merge"]).validate()
    assert "--lora-r, --merge: LoRA settings, unused by --method full" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        parse(["--base", "gpt2", "--method", "lora", "--lora-r", "4"]).validate()
        parse(["--base", "gpt2"]).validate()  # the defaults say nothing
    assert "unused" not in caplog.text
