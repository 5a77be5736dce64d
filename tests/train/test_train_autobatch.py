"""`--micro-batch-size auto`: the search, the trial step (with a fake CUDA out-of-memory error,
since CPU never raises one), the CPU rule, the flags, and that tokens per step never change."""

import argparse
import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.sft.config import add_sft_arguments, sft_config_from_args
from gpt124m.sft.runner import resolve as sft_resolve
from gpt124m.train import autobatch
from gpt124m.train.config import TrainConfig, add_config_arguments, config_from_args
from gpt124m.train.distributed import Dist

CPU = torch.device("cpu")
FakeOOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def test_candidates_are_the_divisors_of_a_ranks_sequences():
    assert autobatch.candidates(12) == [1, 2, 3, 4, 6, 12]
    assert autobatch.candidates(7) == [1, 7]
    assert autobatch.candidates(1) == [1]


@pytest.mark.parametrize("n", [1, 12, 32, 576])
def test_search_finds_the_largest_fitting_size_in_few_trials(n):
    sizes = autobatch.candidates(n)
    for limit in range(0, n + 2):
        tried = []

        def fits(b, limit=limit, tried=tried):
            tried.append(b)
            return b <= limit

        expected = max((s for s in sizes if s <= limit), default=None)
        assert autobatch.largest_fitting(sizes, fits) == expected
        assert len(tried) <= 1 + math.ceil(math.log2(len(sizes))) if len(sizes) > 1 else 1
    # the common case: the whole batch fits, one trial
    tried = []
    assert autobatch.largest_fitting(sizes, lambda b: tried.append(b) or True) == n
    assert tried == [n]


def oom_above(limit, where="forward"):
    """A model whose training step raises CUDA's out-of-memory error above `limit` sequences,
    in the forward pass or only in the optimizer step (then optimizer state must be counted)."""
    torch.manual_seed(0)
    model = GPT(get_preset("tiny"))
    seen = {}

    def hook(module, args):
        seen["batch"] = args[0].shape[0]
        if where == "forward" and seen["batch"] > limit:
            raise FakeOOM("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")

    model.register_forward_pre_hook(hook)
    handle = None
    if where == "optimizer":

        def step_hook(optimizer, args, kwargs):
            if seen["batch"] > limit:
                raise FakeOOM("CUDA out of memory (fake, in the AdamW step)")

        handle = register_optimizer_step_pre_hook(step_hook)
    return model, handle


@pytest.mark.parametrize("where", ["forward", "optimizer"])
def test_trial_steps_pick_the_largest_micro_batch_that_fits(where):
    model, handle = oom_above(3, where)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cfg = TrainConfig(seq_len=16, micro_batch_size="auto", total_batch_tokens=12 * 16)
    try:
        trial = autobatch.TrialStep(model, seq_len=16, device=CPU, amp_dtype=None)
        assert autobatch.choose(cfg, model, device=CPU, fits=trial) == 3  # of 1,2,3,4,6,12
        trial.close()
    finally:
        if handle is not None:
            handle.remove()
    # trials ran on a copy and left the run's random stream alone
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_trial_runs_forward_and_backward_beside_the_optimizer_state(monkeypatch):
    """Every real step after the first holds AdamW's two moments while it runs forward and
    backward; a trial that only ran one step would never hold them at the memory peak."""
    optimizers = []
    build = autobatch.build_adamw

    def recording_build(*args, **kwargs):
        optimizers.append(build(*args, **kwargs))
        return optimizers[-1]

    monkeypatch.setattr(autobatch, "build_adamw", recording_build)
    model = GPT(get_preset("tiny"))
    trial = autobatch.TrialStep(model, seq_len=8, device=CPU, amp_dtype=None)
    states_during_backward = []
    for p in trial.probe.parameters():
        p.register_hook(lambda g: states_during_backward.append(len(optimizers[-1].state)))
    assert trial(2)
    n_params = len(list(trial.probe.parameters()))
    assert max(states_during_backward) == n_params


@pytest.mark.parametrize("compile", [False, True])
def test_trials_for_a_compiled_run_make_the_logits_as_its_loss_does(monkeypatch, compile):
    """Eager training never makes the logits, a compiled step does (Inductor's loss): its
    trials must hold them, or auto picks a batch the compiled step cannot."""
    made = []
    build = autobatch.TrialStep.__init__

    def on_cpu(self, model, **kwargs):  # `choose`'s CUDA path, its trials run on the CPU
        build(self, model, **{**kwargs, "device": CPU})
        made.append(self)

    monkeypatch.setattr(autobatch.TrialStep, "__init__", on_cpu)
    model = GPT(get_preset("tiny"))
    asked = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: asked.append(kwargs["return_logits"]), with_kwargs=True
    )
    cfg = TrainConfig(seq_len=8, micro_batch_size="auto", total_batch_tokens=2 * 8, compile=compile)
    assert autobatch.choose(cfg, model, device=torch.device("cuda")) == 2
    assert made and made[0].logits is compile
    assert asked and set(asked) == {compile}


def test_errors_other_than_out_of_memory_are_not_swallowed():
    model = GPT(get_preset("tiny"))
    model.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(ValueError("a real bug")))
    trial = autobatch.TrialStep(model, seq_len=8, device=CPU, amp_dtype=None)
    with pytest.raises(ValueError, match="a real bug"):
        trial(2)


def test_nothing_fits_is_a_one_line_error():
    model, _ = oom_above(0)
    cfg = TrainConfig(seq_len=16, micro_batch_size="auto", total_batch_tokens=4 * 16)
    trial = autobatch.TrialStep(model, seq_len=16, device=CPU, amp_dtype=None)
    with pytest.raises(RuntimeError, match="not even 1 sequence of 16 tokens"):
        autobatch.choose(cfg, model, device=CPU, fits=trial)


@pytest.mark.parametrize(
    "seq_len, sequences, world, expected",
    [(1024, 64, 1, 8), (256, 64, 1, 32), (1024, 12, 1, 6), (1024, 8, 2, 4), (4096, 4, 1, 2),
     (8192, 3, 1, 1), (16384, 2, 1, 1)],
)  # fmt: skip
def test_off_cuda_auto_takes_the_largest_divisor_of_at_most_8192_tokens(
    seq_len, sequences, world, expected
):
    cfg = TrainConfig(
        seq_len=seq_len, micro_batch_size="auto", total_batch_tokens=sequences * seq_len
    )
    assert autobatch.choose(cfg, None, device=CPU, world_size=world) == expected


def test_resolve_keeps_tokens_per_step_and_logs_the_choice(caplog):
    caplog.set_level("INFO")
    cfg = TrainConfig(seq_len=1024, micro_batch_size="auto", total_batch_tokens=32 * 1024)
    resolved = autobatch.resolve(cfg, None, Dist(device=CPU))
    assert resolved.micro_batch_size == 8 and resolved.total_batch_tokens == 32 * 1024
    assert resolved.grad_accum_steps(1) == 4
    assert "--micro-batch-size auto: 8 sequences of 1024 tokens (gradient accumulation 4)" in (
        caplog.text
    )
    fixed = TrainConfig(micro_batch_size=4)
    assert autobatch.resolve(fixed, None, Dist(device=CPU)) is fixed


def parse_train(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return config_from_args(p.parse_args(argv))


def test_train_flag_takes_a_number_or_auto():
    assert parse_train(["--micro-batch-size", "auto"]).micro_batch_size == "auto"
    assert parse_train(["--micro-batch-size", "4"]).micro_batch_size == 4
    with pytest.raises(ValueError, match="--micro-batch-size 'many': must be a positive integer"):
        parse_train(["--micro-batch-size", "many"])
    with pytest.raises(ValueError, match="multiple of --seq-len 300"):
        parse_train(["--micro-batch-size", "auto", "--seq-len", "300"])
    with pytest.raises(ValueError, match="must be resolved"):
        TrainConfig(micro_batch_size="auto").grad_accum_steps(1)


def test_sft_auto_splits_the_batch_of_examples():
    p = argparse.ArgumentParser()
    add_sft_arguments(p)
    cfg = sft_config_from_args(
        p.parse_args(["--base", "gpt2", "--micro-batch-size", "auto", "--batch-size", "12"])
    )
    run_cfg = sft_resolve(cfg, n_train=100, seq_len=1024, world_size=1)
    assert run_cfg.micro_batch_size == "auto" and run_cfg.total_batch_tokens == 12 * 1024
    resolved = autobatch.resolve(run_cfg, None, Dist(device=CPU))
    assert resolved.micro_batch_size == 6  # largest divisor of 12 with <= 8,192 tokens
    resolved.validate()
