import re

import pytest
import torch

from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.train import optim
from gpt124m.train.config import TrainConfig
from gpt124m.train.optim import (
    Muon,
    MuonAdamW,
    build_adamw,
    build_optimizer,
    load_optimizer_state,
    param_groups,
    set_lr,
)

from ..conftest import needs_muon


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
        # atol: 0.1% of one step's update (lr 1e-2). Rarely (about 1 run in 10 on a busy 2-core
        # CPU) an element whose gradient is ~1e-6 differs by a few 1e-6 between the two kernels;
        # a real difference in the update (weight decay, bias correction) is 1e-4 and more.
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5, msg=name)
    assert not torch.equal(model.transformer.wte.weight, initial)


BLOCK_MATRICES = re.compile(
    r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight"
)


def muon_config(**kw):
    return TrainConfig(
        **{"optimizer": "muon", "max_lr": 1e-2, "muon_lr": 0.05, "weight_decay": 0.1, **kw}
    )


@needs_muon
def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = GPT(get_preset("tiny"))
    opt = build_optimizer(model, muon_config())
    assert isinstance(opt, MuonAdamW) and isinstance(opt.muon, torch.optim.Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon == {n for n in names.values() if BLOCK_MATRICES.fullmatch(n)}
    assert len(muon) == 4 * model.config.n_layer
    assert "transformer.wte.weight" in adamw and "transformer.wpe.weight" in adamw  # wte = head
    assert muon | adamw == set(names.values()) and not muon & adamw
    # AdamW keeps its decay rule: embeddings decay, norms and biases do not
    decayed = {
        names[id(p)] for g in opt.adamw.param_groups if g["weight_decay"] for p in g["params"]
    }
    assert decayed == {"transformer.wte.weight", "transformer.wpe.weight"}


@needs_muon
def test_one_schedule_drives_both_from_their_own_peaks():
    opt = build_optimizer(GPT(get_preset("tiny")), muon_config())
    set_lr(opt, 5e-3)  # half of --max-lr
    assert all(g["lr"] == pytest.approx(0.025) for g in opt.muon.param_groups)
    assert all(g["lr"] == 5e-3 for g in opt.adamw.param_groups)
    plain = build_optimizer(GPT(get_preset("tiny")), TrainConfig(max_lr=1e-2))
    assert isinstance(plain, torch.optim.AdamW)
    set_lr(plain, 5e-3)
    assert all(g["lr"] == 5e-3 for g in plain.param_groups)


@needs_muon
@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "emulated-bf16"])
def test_muon_updates_are_orthogonalised(monkeypatch, native):
    """Muon's step on a matrix has all singular values near lr x its shape factor (Newton-Schulz
    maps them into ~[0.5, 1.5]), however uneven the gradient's are: in bf16 where the hardware
    has it, in fp32 where bf16 matmuls would be emulated (a CPU without AVX512-BF16 or AMX)."""
    monkeypatch.setattr(optim, "native_bf16", lambda device: native)
    torch.manual_seed(0)
    model = GPT(get_preset("tiny"))
    opt = build_optimizer(model, muon_config(muon_weight_decay=0.0))
    assert opt.muon.ns_dtype == (torch.bfloat16 if native else torch.float32)
    set_lr(opt, 1e-2)
    c_fc = model.transformer.h[0].mlp.c_fc.weight  # [4C, C]: Muon scales by sqrt(4C / C) = 2
    before = c_fc.detach().clone()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    c_fc.grad *= torch.logspace(-1, 0.5, c_fc.shape[1])  # column scales spanning 30x
    spread = torch.linalg.svdvals(c_fc.grad)
    assert spread.max() / spread.min() > 20
    opt.step()
    singular = torch.linalg.svdvals((before - c_fc.detach()) / (0.05 * 2))
    assert singular.min() > 0.4 and singular.max() < 1.6


@needs_muon
@pytest.mark.parametrize(
    "options",
    [{}, {"nesterov": False, "weight_decay": 0.0}, {"adjust_lr_fn": "match_rms_adamw"}],
    ids=["nesterov", "plain-momentum", "match-rms"],
)
def test_muons_own_step_is_torchs_algorithm(options):
    """The step `Muon` runs where bf16 is emulated is torch.optim.Muon's, operation for operation:
    run in bf16 as torch runs it, three steps on a tall and a wide matrix end bit-identical (the
    state too); in fp32 they end within bf16's rounding of it."""
    torch.manual_seed(0)
    start = [torch.randn(48, 16), torch.randn(16, 40)]
    grads = [[torch.randn_like(w) * torch.logspace(-1, 0.5, w.shape[1]) for w in start]
             for _ in range(3)]  # fmt: skip

    def run(make, step):
        weights = [torch.nn.Parameter(w.clone()) for w in start]
        opt = make(weights, lr=0.05, momentum=0.9, **options)
        for gs in grads:
            for w, g in zip(weights, gs, strict=True):
                w.grad = g.clone()
            step(opt)
        return weights, [opt.state[w]["momentum_buffer"] for w in weights]

    torch_w, torch_buf = run(torch.optim.Muon, lambda opt: opt.step())
    ours_w, ours_buf = run(Muon, lambda opt: opt._step(torch.bfloat16))
    for a, b in zip(torch_w + torch_buf, ours_w + ours_buf, strict=True):
        assert torch.equal(a, b)
    fp32_w, _ = run(lambda w, **kw: Muon(w, ns_dtype=torch.float32, **kw), lambda opt: opt.step())
    for a, b, w0 in zip(torch_w, fp32_w, start, strict=True):
        moved = (a - w0).abs().max()
        assert 0 < (a - b).abs().max() < 0.05 * moved


@needs_muon
def test_muon_state_round_trips_and_resumes_bit_exact(tmp_path):
    def batches():
        g = torch.Generator().manual_seed(1)
        return [torch.randint(0, 256, (4, 17), generator=g) for _ in range(6)]

    def train(model, opt, data):
        for b in data:
            opt.zero_grad(set_to_none=True)
            model(b[:, :-1], b[:, 1:])[1].backward()
            opt.step()

    torch.manual_seed(0)
    straight = GPT(get_preset("tiny"))
    resumed = GPT(get_preset("tiny"))
    resumed.load_state_dict(straight.state_dict())
    data = batches()
    opt = build_optimizer(straight, muon_config())
    train(straight, opt, data)
    first = build_optimizer(resumed, muon_config())
    train(resumed, first, data[:3])
    torch.save(first.state_dict(), tmp_path / "opt.pt")
    again = build_optimizer(resumed, muon_config())
    load_optimizer_state(again, torch.load(tmp_path / "opt.pt", weights_only=True))
    train(resumed, again, data[3:])
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@needs_muon
def test_resuming_with_the_other_optimizer_is_a_clear_error():
    model = GPT(get_preset("tiny"))
    muon_state = build_optimizer(model, muon_config()).state_dict()
    adamw_state = build_optimizer(model, TrainConfig()).state_dict()
    with pytest.raises(ValueError, match="--optimizer muon"):
        load_optimizer_state(build_optimizer(model, TrainConfig()), muon_state)
    with pytest.raises(ValueError, match="--optimizer the run was started with"):
        load_optimizer_state(build_optimizer(model, muon_config()), adamw_state)


def test_muon_config_is_checked_and_refused_under_fsdp():
    with pytest.raises(ValueError, match="--optimizer 'sgd': choose from adamw, muon"):
        TrainConfig(optimizer="sgd").validate()
    with pytest.raises(ValueError, match="--muon-lr"):
        muon_config(muon_lr=0.0).validate()
    with pytest.raises(ValueError, match="use --parallel ddp, or --optimizer adamw"):
        muon_config(parallel="fsdp").validate()
    TrainConfig(parallel="fsdp").validate()


@pytest.mark.parametrize("kind", ["adamw", pytest.param("muon", marks=needs_muon)])
def test_resume_takes_the_state_from_the_checkpoint_and_the_settings_from_the_flags(kind):
    """Resuming with --weight-decay 0 (or other betas, eps, Muon momentum and LR) must train with
    them: torch's load_state_dict alone would bring back the checkpoint's settings."""
    first = dict(optimizer=kind, max_lr=1e-2, muon_lr=0.05, weight_decay=0.1, beta2=0.95)
    later = dict(first, weight_decay=0.0, beta2=0.99, eps=1e-6, muon_lr=0.02, muon_momentum=0.9)

    def settings(opt):
        return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]

    model = GPT(get_preset("tiny"))
    before = build_optimizer(model, TrainConfig(**first))
    x = torch.randint(0, 256, (2, 17))
    model(x[:, :-1], x[:, 1:])[1].backward()
    before.step()
    resumed = build_optimizer(model, TrainConfig(**later))
    assert settings(resumed) != settings(before)  # the flags did change something
    load_optimizer_state(resumed, before.state_dict())
    assert settings(resumed) == settings(build_optimizer(model, TrainConfig(**later)))

    def states(opt):  # AdamW's state dict, or Muon's and AdamW's
        whole = opt.state_dict()
        return [whole] if kind == "adamw" else list(whole.values())

    for ours, theirs in zip(states(resumed), states(before), strict=True):
        for key, value in theirs["state"].items():
            for name, tensor in value.items():
                assert torch.equal(ours["state"][key][name], tensor), (key, name)
