import pytest
import torch

from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.train.optim import build_adamw, param_groups


def test_weight_decay_applies_to_matrices_and_embeddings_only():
    model = GPT(get_preset("tiny"))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "transformer.wte.weight" in decayed and "transformer.wpe.weight" in decayed
    assert "transformer.h.0.attn.c_attn.weight" in decayed
    assert all(
        names[id(p)].endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_f.weight"))
        for p in no_decay["params"]
    )
    # The tied lm_head is the embedding: counted once, so every parameter is in exactly one group.
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out_and_none_trainable_is_an_error():
    model = GPT(get_preset("tiny"))
    for p in model.transformer.h.parameters():
        p.requires_grad_(False)
    groups = param_groups(model, 0.1)
    assert all(p.requires_grad for g in groups for p in g["params"])
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_adamw(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))


def test_cpu_uses_the_fused_kernel_and_it_matches_the_foreach_update():
    torch.manual_seed(0)
    model = GPT(get_preset("tiny"))
    reference = GPT(get_preset("tiny"))
    reference.load_state_dict(model.state_dict())
    initial = model.transformer.wte.weight.detach().clone()
    fused = build_adamw(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    assert fused.defaults["fused"] is True
    foreach = torch.optim.AdamW(
        param_groups(reference, 0.1), lr=1e-2, betas=(0.9, 0.95), foreach=True
    )
    # The same gradients for both (real ones from one batch): a training loop would let
    # noise-level gradients (e.g. of the key bias, zero in exact arithmetic) diverge under Adam.
    x = torch.randint(0, 256, (2, 16))
    model(x, x)[1].backward()
    for _ in range(3):
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            q.grad = p.grad.clone()
        fused.step()
        foreach.step()
    for (name, a), b in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(model.transformer.wte.weight, initial)
