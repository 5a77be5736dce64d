"""Device facts the trainer looks up (GPU peaks and power, native bf16), checked without a GPU."""

import pytest
import torch

from gpt124m.device import resolve_precision
from gpt124m.train import costs

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize(
    "name, bf16_peak, watts",
    [
        ("NVIDIA H100 80GB HBM3", 989e12, 700),
        ("NVIDIA H100 PCIe", 756e12, 350),
        ("NVIDIA H100 NVL", 835e12, 400),
        ("NVIDIA L40S", 362e12, 350),
        ("NVIDIA L40", 181e12, 300),
        ("NVIDIA L4", 121e12, 72),
        ("NVIDIA A100-SXM4-80GB", 312e12, 400),
        ("NVIDIA A10G", 125e12, 300),
        ("NVIDIA A10", 125e12, 150),
    ],
)
def test_gpu_names_match_their_own_entry(monkeypatch, name, bf16_peak, watts):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert costs.peak_flops(CUDA, torch.bfloat16) == bf16_peak
    assert costs.device_power_watts(CUDA) == watts


def test_unknown_gpu_falls_back_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mystery GPU 9000")
    assert costs.peak_flops(CUDA, torch.float32) == 312e12
    assert "--peak-flops" in caplog.text
    assert costs.peak_flops(CUDA, torch.float32, override=5e12) == 5e12


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_uses_bf16_only_where_the_gpu_runs_it_natively(
    monkeypatch, native, expected
):
    def is_bf16_supported(including_emulation=True):
        return native or including_emulation  # a V100 or T4: bf16 only by emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_precision("auto", CUDA) == expected
    assert resolve_precision("bf16", CUDA) == torch.bfloat16


def test_cpu_peak_is_the_fastest_timing_and_stops_when_its_budget_is_spent(monkeypatch):
    """Where a dtype is emulated one matmul takes seconds: the peak takes the timings a budget
    allows (at least one), not always ten. A fake clock makes the matmuls take 0.5, 0.3, 0.4 s."""
    monkeypatch.setattr(costs, "_cpu_peak_cache", {})
    durations = iter([0.5, 0.3, 0.4, 0.1, 0.1])
    ticks = []

    def clock():
        ticks.append(ticks[-1] + next(durations) if len(ticks) % 2 else 0.0)
        return ticks[-1]

    peak = costs.measured_cpu_peak(torch.float32, repeats=10, budget_s=1.0, clock=clock)
    assert len(ticks) == 6  # three timings: 0.5 + 0.3 + 0.4 s spends the 1 s budget
    assert peak == pytest.approx(2 * 1024**3 / 0.3)
    monkeypatch.setattr(costs, "_cpu_peak_cache", {})
    one = iter([0.0, 5.0])
    assert costs.measured_cpu_peak(torch.float32, clock=lambda: next(one)) == pytest.approx(
        2 * 1024**3 / 5.0
    )  # a single 5 s timing is enough


def test_an_override_of_zero_is_kept_not_replaced_by_the_default():
    """--power-watts 0 (no energy estimate) is what the user asked for, not the table's value."""
    assert costs.device_power_watts(torch.device("cpu"), 0.0) == 0.0
    assert costs.device_power_watts(torch.device("cpu"), None) == costs.CPU_POWER_W


@pytest.mark.parametrize("lora", [False, True])
def test_flops_per_token_are_what_torch_counts_in_a_training_step(lora):
    """The MFU numerator against torch's FLOP counter on a real forward and backward, at two
    context lengths, on a shape whose blocks (not its head) do most of the work: every matmul
    FLOP, attention's included (the math kernel, which the counter sees), exactly; beyond them
    only the 6 per bias and LayerNorm parameter of the 6N convention. A LoRA run's frozen
    weights make no gradient of their own: about 4N, not the 6N that overstated its MFU."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from gpt124m.config import ModelConfig
    from gpt124m.model import GPT

    config = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=256, vocab_size=500)
    torch.manual_seed(0)
    model = GPT(config)
    if lora:
        pytest.importorskip("peft")
        from gpt124m.sft.lora import apply_lora

        model = apply_lora(model, r=8, alpha=8, dropout=0.0)
    vectors = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    # Under LoRA nothing before the first block trains, so autograd skips the gradient into its
    # c_attn and adapter A (2 per weight); the formula, as usual for MFU, counts them.
    d = config.n_embd
    skipped = 2 * (d * 3 * d + d * 8) if lora else 0
    for T in (64, 256):
        idx = torch.randint(0, 500, (2, T))
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model.train()(idx, idx)[1].backward()  # the logits path: every matmul counted
        counted = counter.get_total_flops() / (2 * T)
        assert costs.training_flops_per_token(model, config, T) == counted + 6 * vectors + skipped
