"""`--compile` trains the same model as eager mode and leaves eval, sampling and checkpoints intact."""

import json
import shutil

import pytest
import torch

from gpt124m.config import get_preset
from gpt124m.loading import load_model
from gpt124m.model import GPT
from gpt124m.train.evaluators import Hooks, sample_texts
from gpt124m.train.trainer import fit

from ..conftest import needs_compiler
from .test_train_loop import tiny_cfg, train_losses


def val_batches(fixed_batches):
    source = fixed_batches(n_batches=2, seed=1)
    return lambda: [source.next_batch() for _ in range(2)]


def run(tmp_path, name, fixed_batches, *, compile):
    torch.manual_seed(0)
    seen = []

    def samples(model):
        texts = sample_texts(model, ["Hello"], max_new_tokens=4, seed=0)
        seen.append((type(model), texts[0]))
        return texts

    hooks = Hooks(val_batches=val_batches(fixed_batches), samples=samples)
    cfg = tiny_cfg(
        tmp_path / name,
        max_steps=6,
        eval_every=3,
        sample_every=3,
        checkpoint_every=3,
        compile=compile,
    )
    summary = fit(cfg, GPT(get_preset("tiny")), fixed_batches(n_batches=3), hooks=hooks)
    return summary, tmp_path / name / "run", seen


@needs_compiler
@pytest.mark.slow
def test_compiled_training_matches_eager_and_keeps_eval_and_sampling(tmp_path, fixed_batches):
    torch._dynamo.reset()
    eager, eager_dir, _ = run(tmp_path, "eager", fixed_batches, compile=False)
    compiled, compiled_dir, sampled = run(tmp_path, "compiled", fixed_batches, compile=True)

    assert train_losses(compiled_dir) == pytest.approx(train_losses(eager_dir), abs=1e-4)
    assert compiled["final_val_loss"] == pytest.approx(eager["final_val_loss"], abs=1e-4)
    # sampling gets the plain module (no recompiles per generated length) and still works
    assert len(sampled) == 2 and all(kind is GPT for kind, _ in sampled)
    # and samples what the weights at that step sample, read back from its checkpoint
    for step, (_, text) in zip((3, 6), sampled, strict=True):
        saved = load_model(compiled_dir / "checkpoints" / f"step_{step:07d}")
        assert text == sample_texts(saved, ["Hello"], max_new_tokens=4, seed=0)[0], step
    assert sampled[0][1] != sampled[1][1]  # precondition: a step's weights show in its sample
    kinds = [json.loads(line)["kind"] for line in (compiled_dir / "metrics.jsonl").open()]
    assert kinds.count("samples") == 2 and kinds.count("val") == 3

    # the checkpoint holds plain parameter names, so it loads without torch.compile
    model = load_model(compiled_dir / "checkpoints" / "step_0000006")
    reference = load_model(eager_dir / "checkpoints" / "step_0000006")
    for (name, a), (_, b) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert "_orig_mod" not in name
        # Compiled kernels round differently; AdamW divides by sqrt(v), so an element whose
        # gradient is ~0 can move by up to lr per step either way. Nearly every element must
        # agree to 1e-4, and none may differ by more than those few steps of lr could make.
        diff = (a - b).abs()
        assert (diff > 1e-4 + 1e-4 * b.abs()).float().mean() < 1e-4, name
        assert diff.max() < 6 * 1e-2, name


def test_compile_without_a_cpu_compiler_is_a_clear_error(tmp_path, fixed_batches, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    cfg = tiny_cfg(tmp_path, max_steps=1, compile=True, device="cpu")
    with pytest.raises(ValueError, match="--compile on CPU needs a C\\+\\+ compiler"):
        fit(cfg, GPT(get_preset("tiny")), fixed_batches())
